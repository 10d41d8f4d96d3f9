//go:build tools

// Package tools pins the Argo CD command that cluster/build-argocd.sh compiles. The binary is multi-call: run as
// argocd-application-controller or argocd-repo-server (by its name or ARGOCD_BINARY_NAME) it is that component.
// The e2e tests run those two against the local cluster, see tests/e2e/argocd.py.
package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
