// Package interop proves nexus-gateway against a stock Temporal server: see README.md.
// The suite is in the _test.go files; run it with run.sh.
package interop
