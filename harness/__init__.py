"""SafeRollout's scenario harness: runs the scenario files of the shared format against a real local cluster.

The pieces: `demoapp` (the processes that stand in for pods), `router` (a data plane in miniature) and `traffic`
(the weights it reads from each router's objects), `webhook` (a notification receiver), `services` (real
Prometheus and PostgreSQL), `format` (the scenario format, checked strictly), `scenario` (the run), `expect` (the
checks). See docs/harness.md.
"""
