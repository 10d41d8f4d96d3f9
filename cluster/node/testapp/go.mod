module saferollout.dev/cluster/node/testapp

go 1.22
