package interop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-rpc/sdk-go/nexus"
	enumspb "go.temporal.io/api/enums/v1"
	failurepb "go.temporal.io/api/failure/v1"
	historypb "go.temporal.io/api/history/v1"
	nexuspb "go.temporal.io/api/nexus/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"google.golang.org/protobuf/proto"
)

// TestTemporalInterop runs a stock Temporal server (namespaces orders and billing) and the
// gateway. The caller workflows in orders reach billing's Nexus service first without the
// gateway (baselines: a native worker target, and an external target at Temporal's own Nexus
// HTTP handler; they prove the Temporal side alone), then through a Temporal endpoint whose
// external target is the gateway, which proxies to that same handler. Finally the gateway's
// attribution log and usage totals must account for every call made through it.
func TestTemporalInterop(t *testing.T) {
	// Temporal calls the gateway over https without a client certificate; its Go process
	// trusts the gateway's dev CA through the system roots (SSL_CERT_FILE), which Go reads
	// once per process: a second run here would meet a new CA with the old roots.
	if ranOnce {
		t.Fatal("runs once per process (Go caches SSL_CERT_FILE roots): use -count=1")
	}
	ranOnce = true
	bin := gatewayBinary(t)
	work := workDir(t)
	gw := startGateway(t, bin, filepath.Join(work, "gateway"))
	t.Setenv("SSL_CERT_FILE", gw.CAFile)

	grpcPort, httpPort := pickTemporalPorts()
	ts := startTemporal(t, work, grpcPort, httpPort, "orders", "billing")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Temporal log %s (warnings and errors):\n%s", ts.LogFile, tailFile(ts.LogFile, 40))
		}
	})
	orders, billing := ts.client(t, "orders"), ts.client(t, "billing")

	bw := worker.New(billing, chargesQueue, worker.Options{})
	bw.RegisterNexusService(billingService())
	bw.RegisterWorkflow(chargeWorkflow)
	ow := worker.New(orders, ordersQueue, worker.Options{Interceptors: []interceptor.WorkerInterceptor{&traceInterceptor{}}})
	ow.RegisterWorkflow(orderWorkflow)
	for _, w := range []worker.Worker{bw, ow} {
		if err := w.Start(); err != nil {
			t.Fatalf("starting worker: %v", err)
		}
		t.Cleanup(w.Stop)
	}

	createTemporalEndpoint(t, orders, "payments-direct", &nexuspb.EndpointTarget{
		Variant: &nexuspb.EndpointTarget_Worker_{Worker: &nexuspb.EndpointTarget_Worker{
			Namespace: "billing", TaskQueue: chargesQueue,
		}},
	})
	// Same service through an external target: Temporal calling its own Nexus HTTP handler
	// over HTTP, the path the gateway sits in below, with callbacks via the URL template.
	billingHandler := "http://" + ts.HTTPAddr + "/namespaces/billing/task-queues/" + chargesQueue + "/nexus-services"
	createTemporalEndpoint(t, orders, "payments-external", externalTarget(billingHandler))
	baseline := t.Run("direct", func(t *testing.T) { runCases(t, orders, billing, "payments-direct", "direct") })
	baseline = t.Run("external", func(t *testing.T) { runCases(t, orders, billing, "payments-external", "ext") }) && baseline
	if !baseline {
		t.Fatal("a Temporal-only baseline fails: the Temporal setup is broken, not the gateway")
	}

	// Register Temporal as cluster "east" with the gateway. Its callback template lets the
	// gateway read the caller namespace from Temporal's callback URLs.
	cl := gw.addCluster(t, "east", "http://"+ts.HTTPAddr+"/namespaces/{namespace}/nexus/callback")
	gw.cli(t, "endpoint", "create", "--name", "payments",
		"--target-url", billingHandler, "--allow-caller", "orders@east")
	createTemporalEndpoint(t, orders, "payments", externalTarget(cl.URLPrefix+"payments/services"))
	if !t.Run("gateway", func(t *testing.T) { runCases(t, orders, billing, "payments", "gw") }) {
		return
	}
	t.Run("failures-as-without-gateway", func(t *testing.T) { compareFailures(t, orders, "ext", "gw") })
	t.Run("attribution", func(t *testing.T) { checkAttribution(t, gw) })
}

// compareFailures checks that the failures the caller workflows recorded through the gateway
// (prefix got) are those recorded without it (prefix want), the routing aside: failures,
// handler errors and cancellations cross the gateway unchanged.
func compareFailures(t *testing.T, orders client.Client, want, got string) {
	failure := func(id string) *failurepb.Failure {
		e := firstEvent(t, orders, id, func(e *historypb.HistoryEvent) bool {
			return e.GetNexusOperationFailedEventAttributes() != nil || e.GetNexusOperationCanceledEventAttributes() != nil
		})
		f := e.GetNexusOperationFailedEventAttributes().GetFailure()
		if f == nil {
			f = e.GetNexusOperationCanceledEventAttributes().GetFailure()
		}
		f = proto.Clone(f).(*failurepb.Failure)
		// The endpoint differs by design and the gateway wraps operation tokens.
		if info := f.GetNexusOperationExecutionFailureInfo(); info != nil {
			info.Endpoint, info.OperationId, info.OperationToken = "", "", ""
		}
		return f
	}
	for _, c := range []string{"declined", "bad-request", "cancel"} {
		w, g := failure(want+"-order-"+c), failure(got+"-order-"+c)
		if !proto.Equal(w, g) {
			t.Errorf("%s: through the gateway the caller recorded\n%v\nwithout it\n%v", c, g, w)
		}
	}
}

var ranOnce bool

// The gateway's records expected for one runCases pass, by "kind operation": one start per
// case, the cancel, and the two async completions it relays (the result and the canceled end).
var casesRecords = map[string]int{
	"start " + opSyncCharge:       1,
	"start " + opAsyncCharge:      2, // async and cancel cases
	"start " + opDeclined:         1,
	"start " + opBadRequest:       1,
	"cancel " + opAsyncCharge:     1,
	"completion " + opAsyncCharge: 2,
}

// What usage must bill for one runCases pass: one action per start and per cancel.
const (
	casesStarts  = 5
	casesCancels = 1
)

// runCases runs each scenario as an orders workflow calling endpoint; prefix keeps workflow
// IDs unique per endpoint.
func runCases(t *testing.T, orders, billing client.Client, endpoint, prefix string) {
	run := func(t *testing.T, name string, in orderInput) (chargeResult, error) {
		t.Helper()
		in.Endpoint = endpoint
		in.Charge.ChargeID = prefix + "-charge-" + name
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		run, err := orders.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID:                       prefix + "-order-" + name,
			TaskQueue:                ordersQueue,
			WorkflowExecutionTimeout: 2 * time.Minute,
		}, orderWorkflow, in)
		if err != nil {
			t.Fatalf("starting order workflow: %v", err)
		}
		var res chargeResult
		err = run.Get(ctx, &res)
		if ctx.Err() != nil {
			t.Fatalf("order workflow %s did not finish in time: %v", run.GetID(), err)
		}
		return res, err
	}
	charge := chargeInput{Amount: 42}

	t.Run("sync", func(t *testing.T) {
		res, err := run(t, "sync", orderInput{Operation: opSyncCharge, Charge: charge})
		seen := res.Seen
		res.Seen = seenRequest{}
		want := chargeResult{ChargeID: prefix + "-charge-sync", Amount: 42, By: "sync"}
		if err != nil || res != want {
			t.Fatalf("got %+v, %v; want %+v", res, err, want)
		}
		checkSeen(t, orders, prefix+"-order-sync", seen)
	})
	t.Run("async", func(t *testing.T) {
		res, err := run(t, "async", orderInput{Operation: opAsyncCharge, Charge: charge})
		want := chargeResult{ChargeID: prefix + "-charge-async", Amount: 42, By: "workflow"}
		if err != nil || res != want {
			t.Fatalf("got %+v, %v; want %+v", res, err, want)
		}
		checkLinks(t, orders, billing, prefix+"-order-async", prefix+"-charge-async")
	})
	t.Run("cancel", func(t *testing.T) {
		in := orderInput{Operation: opAsyncCharge, Charge: charge, CancelAfterStart: true}
		in.Charge.WaitForCancel = true
		res, err := run(t, "cancel", in)
		if err != nil || res.By != "canceled" {
			t.Fatalf("caller: got %+v, %v; want the operation canceled", res, err)
		}
		// The cancel must have reached the handler workflow in billing.
		id := prefix + "-charge-cancel"
		var status enumspb.WorkflowExecutionStatus
		if eventually(30*time.Second, func() bool {
			d, err := billing.DescribeWorkflowExecution(context.Background(), id, "")
			status = d.GetWorkflowExecutionInfo().GetStatus()
			return err == nil && status == enumspb.WORKFLOW_EXECUTION_STATUS_CANCELED
		}) != nil {
			t.Fatalf("handler workflow %s: status %v, want CANCELED", id, status)
		}
	})
	t.Run("operation-failure", func(t *testing.T) {
		_, err := run(t, "declined", orderInput{Operation: opDeclined, Charge: charge})
		var appErr *temporal.ApplicationError
		opErr := nexusError(t, err, opDeclined)
		// The SDK wraps the handler's failure: ApplicationError (type OperationError) caused by
		// the message, so the message is checked on the whole cause chain.
		if !errors.As(opErr.Cause, &appErr) || !strings.Contains(opErr.Cause.Error(), declinedReason) {
			t.Fatalf("cause: got %T %v; want ApplicationError %q", opErr.Cause, opErr.Cause, declinedReason)
		}
	})
	t.Run("handler-error", func(t *testing.T) {
		_, err := run(t, "bad-request", orderInput{Operation: opBadRequest, Charge: charge})
		var hErr *nexus.HandlerError
		opErr := nexusError(t, err, opBadRequest)
		if !errors.As(opErr.Cause, &hErr) || hErr.Type != nexus.HandlerErrorTypeBadRequest ||
			hErr.Message != badRequestText {
			t.Fatalf("cause: got %T %v; want a BAD_REQUEST HandlerError %q", opErr.Cause, opErr.Cause, badRequestText)
		}
	})
}

// checkSeen checks what the sync handler received: the request ID of the caller's scheduled
// event, the header the caller workflow set, an operation timeout, and a link to the caller.
func checkSeen(t *testing.T, orders client.Client, callerID string, seen seenRequest) {
	t.Helper()
	scheduled := firstEvent(t, orders, callerID, func(e *historypb.HistoryEvent) bool {
		return e.GetNexusOperationScheduledEventAttributes() != nil
	}).GetNexusOperationScheduledEventAttributes()
	t.Logf("handler saw %+v", seen)
	if seen.RequestID == "" || seen.RequestID != scheduled.GetRequestId() {
		t.Errorf("handler saw request ID %q; the caller scheduled %q", seen.RequestID, scheduled.GetRequestId())
	}
	if seen.Trace != callerID {
		t.Errorf("handler saw %s: %q; the caller workflow set %q", traceHeader, seen.Trace, callerID)
	}
	if seen.OperationTimeout == "" {
		t.Errorf("handler saw no %s header (the caller set a schedule-to-close timeout)", nexus.HeaderOperationTimeout)
	}
	if !strings.Contains(seen.Links, callerID) {
		t.Errorf("handler saw links %q; want one to the caller workflow %s", seen.Links, callerID)
	}
}

// firstEvent returns the first event of workflow id's history that matches.
func firstEvent(t *testing.T, c client.Client, id string, match func(*historypb.HistoryEvent) bool) *historypb.HistoryEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for it := c.GetWorkflowHistory(ctx, id, "", false, 0); it.HasNext(); {
		e, err := it.Next()
		if err != nil {
			t.Fatalf("history of %s: %v", id, err)
		}
		if match(e) {
			return e
		}
	}
	t.Fatalf("history of %s: event not found", id)
	return nil
}

// checkLinks checks the Nexus links Temporal exchanges in headers (they let each side's
// history point at the other): the caller's started event links the handler workflow, and
// the handler workflow's completion callback links the caller workflow.
func checkLinks(t *testing.T, orders, billing client.Client, callerID, handlerID string) {
	t.Helper()
	started := firstEvent(t, orders, callerID, func(e *historypb.HistoryEvent) bool {
		return e.GetNexusOperationStartedEventAttributes() != nil
	})
	if l := started.GetLinks(); len(l) != 1 || l[0].GetWorkflowEvent().GetWorkflowId() != handlerID {
		t.Errorf("caller's operation-started event links %v; want the handler workflow %s", l, handlerID)
	}
	handlerStart := firstEvent(t, billing, handlerID, func(e *historypb.HistoryEvent) bool {
		return e.GetWorkflowExecutionStartedEventAttributes() != nil
	})
	cbs := handlerStart.GetWorkflowExecutionStartedEventAttributes().GetCompletionCallbacks()
	if len(cbs) != 1 || len(cbs[0].GetLinks()) != 1 || cbs[0].GetLinks()[0].GetWorkflowEvent().GetWorkflowId() != callerID {
		t.Errorf("handler workflow's completion callbacks %v; want one linking the caller workflow %s", cbs, callerID)
	}
}

// nexusError checks that the caller workflow failed with a Temporal Nexus operation error
// for operation and returns it.
func nexusError(t *testing.T, err error, operation string) *temporal.NexusOperationError {
	t.Helper()
	var opErr *temporal.NexusOperationError
	if !errors.As(err, &opErr) {
		t.Fatalf("got %v; want a NexusOperationError", err)
	}
	if opErr.Service != serviceName || opErr.Operation != operation {
		t.Fatalf("error names %s/%s; want %s/%s", opErr.Service, opErr.Operation, serviceName, operation)
	}
	return opErr
}

// checkAttribution checks the gateway's records and bill for the calls of the "gateway" cases.
func checkAttribution(t *testing.T, gw *gateway) {
	var recs []record
	missing := func() (m []string) {
		got := map[string]int{}
		for _, r := range recs {
			got[r.Kind+" "+r.Operation]++
		}
		for k, n := range casesRecords {
			if got[k] < n {
				m = append(m, fmt.Sprintf("%s: %d of %d", k, got[k], n))
			}
		}
		return m
	}
	// A completion record is written as the gateway relays it; allow it a moment.
	_ = eventually(30*time.Second, func() bool {
		recs = gw.attribution(t)
		return len(missing()) == 0
	})
	var dump strings.Builder
	for _, r := range recs {
		fmt.Fprintln(&dump, r)
	}
	if m := missing(); len(m) > 0 {
		t.Fatalf("attribution records missing (%s):\n%s", strings.Join(m, "; "), &dump)
	}
	for _, r := range recs {
		if r.Endpoint != "payments" {
			t.Errorf("record for an unexpected endpoint: %s", r)
			continue
		}
		if r.CallerNamespace != "orders@east" {
			t.Errorf("caller_namespace %q, want orders@east: %s", r.CallerNamespace, r)
		}
		if r.TargetNamespace != "billing" {
			t.Errorf("target_namespace %q, want billing (derived from the Temporal-shaped target URL): %s",
				r.TargetNamespace, r)
		}
	}

	rows := gw.usage(t)
	var got usageRow
	for _, row := range rows {
		if row.Endpoint == "payments" && row.CallerNamespace == "orders@east" {
			got = row
		}
	}
	if got.Starts != casesStarts || got.Cancels != casesCancels || got.Actions != casesStarts+casesCancels {
		t.Errorf("usage for orders@east on payments: %+v; want %d starts, %d cancels, %d actions\nall rows: %+v",
			got, casesStarts, casesCancels, casesStarts+casesCancels, rows)
	}
	if got.TargetNamespace != "billing" {
		t.Errorf("usage row target_namespace %q, want billing", got.TargetNamespace)
	}
	// Shown with -v: the records are the evidence of what went through the gateway.
	t.Logf("attribution log:\n%s", &dump)
	t.Logf("usage rows: %+v", rows)
}

func externalTarget(url string) *nexuspb.EndpointTarget {
	return &nexuspb.EndpointTarget{Variant: &nexuspb.EndpointTarget_External_{
		External: &nexuspb.EndpointTarget_External{Url: url},
	}}
}

func createTemporalEndpoint(t *testing.T, c client.Client, name string, target *nexuspb.EndpointTarget) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.OperatorService().CreateNexusEndpoint(ctx, &operatorservice.CreateNexusEndpointRequest{
		Spec: &nexuspb.EndpointSpec{Name: name, Target: target},
	})
	if err != nil {
		t.Fatalf("creating Temporal endpoint %s: %v", name, err)
	}
}

// workDir is a temporary directory for the gateway's data and the servers' logs, removed
// after the test unless it failed or TEMPORAL_INTEROP_KEEP is set (then kept for the logs).
func workDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "temporal-interop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("TEMPORAL_INTEROP_KEEP") != "" {
			t.Logf("kept %s for its logs", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

// sdkLogger keeps SDK client and worker logs to warnings and errors.
func sdkLogger() sdklog.Logger {
	return sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
}
