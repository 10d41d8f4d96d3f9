-- Argo CD health check for saferollout.dev/SafeRollout.
-- Goes into argocd-cm under the key resource.customizations.health.saferollout.dev_SafeRollout
-- (see docs/install.md). Argo CD runs it with the object as the global `obj` (Lua 5.1, gopher-lua).
-- A rollout that is still moving is Progressing, so an Argo CD sync waits for the verdict; a rollback or a
-- failure is Degraded; a pause is Suspended.
local hs = {}

local phases = {
  Pending = "Progressing",
  Preflight = "Progressing",
  Progressing = "Progressing",
  Promoting = "Progressing",
  RollingBack = "Progressing",
  Succeeded = "Healthy",
  Paused = "Suspended",
  RolledBack = "Degraded",
  Failed = "Degraded",
  Blocked = "Degraded",
}

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

-- The status describes an older spec: the verdict on the new one is not in yet.
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation) ..
    " (status is for generation " .. tostring(observed) .. ")"
  return hs
end

local mapped = phases[status.phase]
if mapped == nil then
  hs.status = "Unknown"
  hs.message = "unknown phase " .. tostring(status.phase)
  return hs
end

hs.status = mapped
if status.message ~= nil and status.message ~= "" then
  hs.message = status.message
else
  hs.message = status.phase
end
return hs
