package interop

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nexus-rpc/sdk-go/nexus"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/temporalnexus"
	"go.temporal.io/sdk/workflow"
)

// Names shared by the handler (billing) and the caller (orders).
const (
	serviceName  = "billing"
	chargesQueue = "charges" // billing's Nexus task queue
	ordersQueue  = "orders"  // orders' workflow task queue

	opSyncCharge   = "sync-charge"
	opAsyncCharge  = "async-charge"
	opDeclined     = "declined"
	opBadRequest   = "bad-request"
	declinedReason = "card declined"
	badRequestText = "amount must be positive"
)

type chargeInput struct {
	ChargeID string // also the handler workflow's ID, so the test can describe it
	Amount   int
	// WaitForCancel makes the handler workflow block until it is canceled.
	WaitForCancel bool
}

type chargeResult struct {
	ChargeID string
	Amount   int
	By       string      // which handler produced it
	Seen     seenRequest // what the sync handler received besides the input
}

// seenRequest is what reached the handler of a sync start, so the caller can check that
// everything Temporal sends crossed the gateway unchanged.
type seenRequest struct {
	RequestID        string // Nexus-Request-Id
	Trace            string // traceHeader, set by the caller workflow
	OperationTimeout string // Operation-Timeout, from the caller's schedule-to-close timeout
	Links            string // Nexus-Link URLs, space-separated
}

// traceHeader is a Nexus header the caller workflow sets (see traceInterceptor).
const traceHeader = "x-order-trace"

// billingService is the Nexus service the billing worker serves on task queue "charges".
func billingService() *nexus.Service {
	s := nexus.NewService(serviceName)
	s.MustRegister(
		nexus.NewSyncOperation(opSyncCharge, func(_ context.Context, in chargeInput, o nexus.StartOperationOptions) (chargeResult, error) {
			seen := seenRequest{
				RequestID:        o.RequestID,
				Trace:            o.Header.Get(traceHeader),
				OperationTimeout: o.Header.Get(nexus.HeaderOperationTimeout),
			}
			for _, l := range o.Links {
				seen.Links = strings.TrimSpace(seen.Links + " " + l.URL.String())
			}
			return chargeResult{ChargeID: in.ChargeID, Amount: in.Amount, By: "sync", Seen: seen}, nil
		}),
		temporalnexus.NewWorkflowRunOperation(opAsyncCharge, chargeWorkflow,
			func(_ context.Context, in chargeInput, _ nexus.StartOperationOptions) (client.StartWorkflowOptions, error) {
				return client.StartWorkflowOptions{ID: in.ChargeID, WorkflowExecutionTimeout: 2 * time.Minute}, nil
			}),
		nexus.NewSyncOperation(opDeclined, func(_ context.Context, _ chargeInput, _ nexus.StartOperationOptions) (chargeResult, error) {
			return chargeResult{}, nexus.NewOperationFailedError(declinedReason)
		}),
		nexus.NewSyncOperation(opBadRequest, func(_ context.Context, _ chargeInput, _ nexus.StartOperationOptions) (chargeResult, error) {
			return chargeResult{}, nexus.NewHandlerErrorf(nexus.HandlerErrorTypeBadRequest, badRequestText)
		}),
	)
	return s
}

// chargeWorkflow is the billing workflow behind the async operation.
func chargeWorkflow(ctx workflow.Context, in chargeInput) (chargeResult, error) {
	if in.WaitForCancel {
		// Returns the cancellation once the caller's cancel reaches this workflow.
		err := workflow.Await(ctx, func() bool { return false })
		return chargeResult{}, err
	}
	// A timer makes the completion truly asynchronous (delivered by callback).
	if err := workflow.Sleep(ctx, 500*time.Millisecond); err != nil {
		return chargeResult{}, err
	}
	return chargeResult{ChargeID: in.ChargeID, Amount: in.Amount, By: "workflow"}, nil
}

type orderInput struct {
	Endpoint  string
	Operation string
	Charge    chargeInput
	// CancelAfterStart cancels the operation once the handler has started it.
	CancelAfterStart bool
}

// orderWorkflow is the caller: it runs one Nexus operation through the given endpoint.
func orderWorkflow(ctx workflow.Context, in orderInput) (chargeResult, error) {
	c := workflow.NewNexusClient(in.Endpoint, serviceName)
	opts := workflow.NexusOperationOptions{ScheduleToCloseTimeout: 90 * time.Second}
	var res chargeResult
	if !in.CancelAfterStart {
		err := c.ExecuteOperation(ctx, in.Operation, in.Charge, opts).Get(ctx, &res)
		return res, err
	}
	opCtx, cancel := workflow.WithCancel(ctx)
	fut := c.ExecuteOperation(opCtx, in.Operation, in.Charge, opts)
	var exec workflow.NexusOperationExecution
	if err := fut.GetNexusOperationExecution().Get(ctx, &exec); err != nil {
		return res, err
	}
	if exec.OperationToken == "" {
		return res, errors.New("operation did not start asynchronously")
	}
	cancel()
	// With the default cancellation type this waits for the handler workflow to end canceled.
	err := fut.Get(ctx, &res)
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) {
		return chargeResult{ChargeID: in.Charge.ChargeID, By: "canceled"}, nil
	}
	return res, err
}

// traceInterceptor sets traceHeader (the caller's workflow ID) on the Nexus operations the
// caller workflows start: headers a workflow sets must reach the handler.
type traceInterceptor struct {
	interceptor.WorkerInterceptorBase
}

func (*traceInterceptor) InterceptWorkflow(_ workflow.Context, next interceptor.WorkflowInboundInterceptor) interceptor.WorkflowInboundInterceptor {
	return &traceInbound{interceptor.WorkflowInboundInterceptorBase{Next: next}}
}

type traceInbound struct {
	interceptor.WorkflowInboundInterceptorBase
}

func (i *traceInbound) Init(outbound interceptor.WorkflowOutboundInterceptor) error {
	return i.Next.Init(&traceOutbound{interceptor.WorkflowOutboundInterceptorBase{Next: outbound}})
}

type traceOutbound struct {
	interceptor.WorkflowOutboundInterceptorBase
}

func (o *traceOutbound) ExecuteNexusOperation(ctx workflow.Context, in interceptor.ExecuteNexusOperationInput) workflow.NexusOperationFuture {
	in.NexusHeader[traceHeader] = workflow.GetInfo(ctx).WorkflowExecution.ID
	return o.Next.ExecuteNexusOperation(ctx, in)
}
