package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/server/common/testing/freeport"
)

// gateway is a `nexus-gateway dev` process: its own dev CA and certificates under Dir/certs,
// callbacks and plain-http upstreams allowed on loopback.
type gateway struct {
	bin     string
	Dir     string
	URL     string // data port, https, named as in the dev server certificate
	CAFile  string
	LogFile string
}

// gatewayBinary is NEXUS_GATEWAY_BIN, else the workspace's debug build.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("NEXUS_GATEWAY_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "target", "debug", "nexus-gateway")
	}
	abs, err := filepath.Abs(bin)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil {
		t.Fatalf("nexus-gateway binary not found (%v): build it with `cargo build -p nexus-gateway` "+
			"in the repository root and/or set NEXUS_GATEWAY_BIN; tests/temporal/run.sh does both", err)
	}
	return abs
}

// startGateway runs the gateway in dir and waits (bounded) until its ops port reports ready.
// The process is killed at cleanup, also when the test fails.
func startGateway(t *testing.T, bin, dir string) *gateway {
	t.Helper()
	g := &gateway{bin: bin, Dir: dir, LogFile: filepath.Join(dir, "gateway.log")}
	port, opsPort := freeport.MustGetFreePort(), freeport.MustGetFreePort()
	g.URL = fmt.Sprintf("https://localhost:%d", port)
	g.CAFile = filepath.Join(dir, "certs", "ca.pem")

	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(g.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(g.bin, "dev", "--no-demo",
		"--data-dir", dir,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--ops-listen", fmt.Sprintf("127.0.0.1:%d", opsPort))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", g.bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); _ = logFile.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("gateway log %s:\n%s", g.LogFile, tailFile(g.LogFile, 60))
		}
	})

	ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", opsPort)
	probe := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("gateway exited during startup: %v\n%s", waitErr, tailFile(g.LogFile, 40))
		default:
		}
		if resp, err := probe.Get(ready); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return g
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready after 30s\n%s", tailFile(g.LogFile, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cli runs an admin/metering command against this gateway (dev certificates) and returns stdout.
func (g *gateway) cli(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append(args, "--gateway", g.URL, "--dev-dir", g.Dir)
	cmd := exec.CommandContext(ctx, g.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nexus-gateway %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, &stdout, &stderr)
	}
	return stdout.Bytes()
}

// cluster is what `cluster add --json` prints: the secret is shown once, urlPrefix is where the
// Temporal cluster's external endpoints point.
type gatewayCluster struct {
	Secret    string `json:"secret"`
	URLPrefix string `json:"urlPrefix"`
}

func (g *gateway) addCluster(t *testing.T, name, callbackTemplate string) gatewayCluster {
	t.Helper()
	out := g.cli(t, "cluster", "add", "--name", name, "--callback-url-template", callbackTemplate, "--json")
	var c gatewayCluster
	if err := json.Unmarshal(out, &c); err != nil || c.Secret == "" || !strings.HasPrefix(c.URLPrefix, "https://") {
		t.Fatalf("cluster add: unexpected output (%v): %s", err, out)
	}
	return c
}

// record is one attribution log line (the fields the test checks).
type record struct {
	Seq             int    `json:"seq"`
	Kind            string `json:"kind"`
	CallerNamespace string `json:"caller_namespace"`
	TargetNamespace string `json:"target_namespace"`
	Endpoint        string `json:"endpoint"`
	Service         string `json:"service"`
	Operation       string `json:"operation"`
	Outcome         string `json:"outcome"`
	Status          int    `json:"status"`
	Billable        int    `json:"billable"`
	raw             string
}

func (r record) String() string { return r.raw }

func (g *gateway) attribution(t *testing.T) []record {
	t.Helper()
	var recs []record
	sc := bufio.NewScanner(bytes.NewReader(g.cli(t, "attribution", "tail")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		r := record{raw: line}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("attribution line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// usageRow is one row of `usage --format json`.
type usageRow struct {
	CallerNamespace string `json:"caller_namespace"`
	TargetNamespace string `json:"target_namespace"`
	Endpoint        string `json:"endpoint"`
	Actions         int    `json:"actions"`
	Starts          int    `json:"starts"`
	Cancels         int    `json:"cancels"`
	Completions     int    `json:"completions"`
	Errors          int    `json:"errors"`
	Rejected        int    `json:"rejected"`
}

func (g *gateway) usage(t *testing.T) []usageRow {
	t.Helper()
	out := g.cli(t, "usage", "--format", "json")
	var rows []usageRow
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("usage: %v: %s", err, out)
	}
	return rows
}

// tailFile returns the last n lines of a file, for failure messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var errTimeout = errors.New("timed out")

// eventually polls cond every 200ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) error {
	for deadline := time.Now().Add(d); ; time.Sleep(200 * time.Millisecond) {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return errTimeout
		}
	}
}
