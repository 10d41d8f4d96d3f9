//go:build tools

// Package tools pins the Traefik command that cluster/build-traefik.sh compiles: a real Gateway API data plane
// (the kubernetesGateway provider) for the e2e harness, see harness/traefik.py.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
