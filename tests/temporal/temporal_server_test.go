package interop

import (
	"fmt"
	"math/rand"
	"path/filepath"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/server/chasm/lib/callback"
	"go.temporal.io/server/chasm/lib/nexusoperation"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/log"
	"go.temporal.io/server/common/metrics"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/testing/freeport"
	"go.temporal.io/server/components/callbacks"
	"go.temporal.io/server/components/nexusoperations"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
)

// temporalServer is a stock Temporal server (all four services in this process, in-memory
// SQLite). It is built by hand rather than with temporaltest because the Nexus tests need the
// frontend HTTP port (Nexus HTTP handler and completion callbacks) and dynamic config that
// temporaltest does not expose.
type temporalServer struct {
	GRPCAddr string // frontend gRPC, for SDK clients
	HTTPAddr string // frontend HTTP: Nexus handler and callback routes
	LogFile  string
}

// pickTemporalPorts reserves the frontend ports up front: the gateway's endpoint must name
// Temporal's HTTP address, and the gateway has to run (for its CA) before Temporal starts.
func pickTemporalPorts() (grpcPort, httpPort int) {
	return freeport.MustGetFreePort(), freeport.MustGetFreePort()
}

// startTemporal starts the server with namespaces pre-registered and stops it at cleanup.
// Any TLS trust (SSL_CERT_FILE) must be set before this: Go loads system roots once.
func startTemporal(t *testing.T, logDir string, grpcPort, httpPort int, namespaces ...string) *temporalServer {
	t.Helper()
	const ip = "127.0.0.1"
	ts := &temporalServer{
		GRPCAddr: fmt.Sprintf("%s:%d", ip, grpcPort),
		HTTPAddr: fmt.Sprintf("%s:%d", ip, httpPort),
		LogFile:  filepath.Join(logDir, "temporal.log"),
	}

	sqlCfg := &config.SQL{
		PluginName: sqliteplugin.PluginName,
		// Shared-cache in-memory database: nothing on disk, fresh per run.
		ConnectAttributes: map[string]string{"mode": "memory", "cache": "shared"},
		DatabaseName:      fmt.Sprintf("interop%d", rand.Intn(1e9)),
	}
	service := func(grpc, http int) config.Service {
		if grpc == 0 {
			grpc = freeport.MustGetFreePort()
		}
		return config.Service{RPC: config.RPC{
			GRPCPort:       grpc,
			HTTPPort:       http,
			MembershipPort: freeport.MustGetFreePort(),
			BindOnIP:       ip,
		}}
	}
	cfg := &config.Config{
		Global: config.Global{
			Membership: config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: ip},
			Metrics: &metrics.Config{Prometheus: &metrics.PrometheusConfig{
				ListenAddress: fmt.Sprintf("%s:%d", ip, freeport.MustGetFreePort()),
				HandlerPath:   "/metrics",
			}},
		},
		Persistence: config.Persistence{
			DefaultStore:     sqliteplugin.PluginName,
			VisibilityStore:  sqliteplugin.PluginName,
			NumHistoryShards: 1,
			DataStores:       map[string]config.DataStore{sqliteplugin.PluginName: {SQL: sqlCfg}},
		},
		ClusterMetadata: &cluster.Config{
			FailoverVersionIncrement: 10,
			MasterClusterName:        "active",
			CurrentClusterName:       "active",
			ClusterInformation: map[string]cluster.ClusterInformation{
				"active": {Enabled: true, InitialFailoverVersion: 1, RPCAddress: ts.GRPCAddr},
			},
		},
		DCRedirectionPolicy: config.DCRedirectionPolicy{Policy: "noop"},
		Services: map[string]config.Service{
			"frontend": service(grpcPort, httpPort),
			"history":  service(0, 0),
			"matching": service(0, 0),
			"worker":   service(0, 0),
		},
		Archival: config.Archival{
			History:    config.HistoryArchival{State: "disabled"},
			Visibility: config.VisibilityArchival{State: "disabled"},
		},
		NamespaceDefaults: config.NamespaceDefaults{Archival: config.ArchivalNamespaceDefaults{
			History:    config.HistoryArchivalNamespaceDefaults{State: "disabled"},
			Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"},
		}},
		PublicClient: config.PublicClient{HostPort: ts.GRPCAddr},
	}

	var nsConfigs []*sqlite.NamespaceConfig
	for _, ns := range namespaces {
		c, err := sqlite.NewNamespaceConfig("active", ns, false, nil)
		if err != nil {
			t.Fatalf("namespace config %s: %v", ns, err)
		}
		nsConfigs = append(nsConfigs, c)
	}
	if err := sqlite.CreateNamespaces(sqlCfg, nsConfigs...); err != nil {
		t.Fatalf("creating namespaces: %v", err)
	}

	// Callback URLs handed to Nexus handlers point at this server's own HTTP port; both the
	// HSM and the CHASM implementations read their own key. Handlers may call back to any
	// address (the gateway's https callback URL), http allowed for loopback.
	callbackTemplate := "http://" + ts.HTTPAddr + "/namespaces/{{.NamespaceName}}/nexus/callback"
	dc := dynamicconfig.StaticClient{
		nexusoperations.CallbackURLTemplate.Key(): callbackTemplate,
		nexusoperation.CallbackURLTemplate.Key():  callbackTemplate,
		callback.AllowedAddresses.Key(): []any{
			map[string]any{"Pattern": "*", "AllowInsecure": true},
		},
		// Retry failed Nexus requests and callbacks quickly so a transient failure costs
		// seconds, not the default minutes of backoff.
		nexusoperations.RetryPolicyInitialInterval.Key(): 200 * time.Millisecond,
		nexusoperations.RetryPolicyMaximumInterval.Key(): 2 * time.Second,
		callback.RetryPolicyInitialInterval.Key():        200 * time.Millisecond,
		callback.RetryPolicyMaximumInterval.Key():        2 * time.Second,
		callbacks.RetryPolicyInitialInterval.Key():       200 * time.Millisecond,
		callbacks.RetryPolicyMaximumInterval.Key():       2 * time.Second,
	}

	logger := log.NewZapLogger(log.BuildZapLogger(log.Config{Level: "warn", OutputFile: ts.LogFile}))
	srv, err := temporal.NewServer(
		temporal.WithConfig(cfg),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithLogger(logger),
		temporal.WithDynamicConfigClient(dc),
	)
	if err != nil {
		t.Fatalf("creating Temporal server: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("starting Temporal server: %v (log: %s)", err, ts.LogFile)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Logf("stopping Temporal server: %v", err)
		}
	})
	return ts
}

// client dials the frontend for namespace ns; closed at cleanup.
func (ts *temporalServer) client(t *testing.T, ns string) client.Client {
	t.Helper()
	c, err := client.Dial(client.Options{HostPort: ts.GRPCAddr, Namespace: ns, Logger: sdkLogger()})
	if err != nil {
		t.Fatalf("dialing Temporal (%s): %v", ns, err)
	}
	t.Cleanup(c.Close)
	return c
}
