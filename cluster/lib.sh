# Process supervision shared by up.sh, down.sh, argocd-up.sh and argocd-down.sh (sourced, never run).
# The caller sets `me` (its name in messages), `logs` (the log dir) and `components` (what it starts, in order), and
# defines `pid_alive <component>` and `teardown` (stops what was started, keeping the logs), before calling
# check_alive, wait_for or fail.

log() { echo "$me: $*" >&2; }
die() { echo "$me: ERROR: $*" >&2; exit 1; }

# Running and not a zombie (a component the starter launched and that already exited is a zombie until it ends).
running() { [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 != "Z") }' "/proc/$1/stat" 2>/dev/null; }

# stop_pid <component> <pid>: each component leads its own process group (setsid), so the group is signalled,
# children included; SIGKILL after 10 s, and gone before returning, so a start right after finds its ports free.
stop_pid() {
  local c=$1 p=$2
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 100); do running "$p" || break; sleep 0.1; done
  if running "$p"; then
    log "$c (pid $p) still running 10s after SIGTERM; killing it"
    kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do running "$p" || break; sleep 0.1; done
  fi
}

tail_log() {  # prints the end of a component's log, to say why it failed
  local f=$logs/$1.log
  if [ -s "$f" ]; then echo "----- last 30 lines of $f -----" >&2; tail -n 30 "$f" >&2; echo "-----" >&2
  else echo "(no log output in $f)" >&2; fi
}

# fail <message> <blamed components...>: stop everything started so far (the logs stay for debugging), quote the
# blamed components' logs, exit non-zero.
fail() {
  local msg=$1; shift
  echo "$me: ERROR: $msg" >&2
  local c; for c in "$@"; do tail_log "$c"; done
  teardown >&2 || true
  echo "$me: what was started is stopped; logs are kept in $logs" >&2
  exit 1
}

all_alive() { local c; for c in "${components[@]}"; do pid_alive "$c" || return 1; done; }
check_alive() {  # fails naming the first component that exited
  local c; for c in "${components[@]}"; do
    if [ -s "$pids/$c.pid" ] && ! pid_alive "$c"; then fail "$c exited during startup" "$c"; fi
  done
}

# wait_for <what> <blamed components...> -- <command...>: polls the command every 0.2 s for up to $timeout_s.
wait_for() {
  local what=$1; shift
  local blame=(); while [ "$1" != "--" ]; do blame+=("$1"); shift; done; shift
  local deadline; deadline=$(( $(date +%s) + timeout_s ))
  until "$@" >/dev/null 2>&1; do
    check_alive
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${timeout_s}s waiting for $what" "${blame[@]}"
    sleep 0.2
  done
}

# guard_port add|remove <port>: drop TCP to the port from anything but loopback, for a server that binds every
# address (no flag to bind loopback only). Needs root; `remove` takes out every copy of the rule.
guard_port() {
  local op=$1 port=$2 ipt
  local rule=(-p tcp --dport "$port" ! -i lo -m comment --comment "saferollout-guard-$port" -j DROP)
  for ipt in iptables ip6tables; do
    case $op in
      add) "$ipt" -w -C INPUT "${rule[@]}" 2>/dev/null || "$ipt" -w -I INPUT "${rule[@]}" || return 1 ;;
      remove) while "$ipt" -w -D INPUT "${rule[@]}" 2>/dev/null; do :; done ;;
    esac
  done
}
