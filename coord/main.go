// Command coord runs one coordinator: the gRPC API over TLS, a Raft replica
// of the cluster state in badger, the libp2p circuit relay, health and
// Prometheus metrics. This file is flags and wiring only; coord/server,
// coord/store and coord/relay do the work.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/relay"
	"github.com/e2em/e2em/coord/server"
	"github.com/e2em/e2em/coord/store"
	"github.com/e2em/e2em/coord/store/statepb"
	"github.com/e2em/e2em/internal/pki"
)

type options struct {
	relayOpen                                                 bool
	id, dataDir, apiAddr, apiAdvertise, raftAddr, metricsAddr string
	p2pListen, p2pAnnounce, join, trustedProxies              string
	caFile, certFile, keyFile, logLevel                       string
	bootstrap, nonvoter, logJSON, leaseReads                  bool
	srv                                                       server.Config
	relay                                                     relay.Config
	heartbeat, election                                       time.Duration
	gcPercent                                                 int
}

func parseFlags(args []string) (*options, error) {
	o := &options{srv: server.DefaultConfig(), relay: relay.DefaultConfig()}
	fs := flag.NewFlagSet("coord", flag.ContinueOnError)
	fs.StringVar(&o.id, "id", "", "this coordinator's id in the cluster, e.g. c1 (required)")
	fs.StringVar(&o.dataDir, "data", "", "data directory (default ./data/<id>)")
	fs.StringVar(&o.apiAddr, "api", "127.0.0.1:7101", "host:port for the gRPC API (TLS)")
	fs.StringVar(&o.apiAdvertise, "api-advertise", "", "API address other coordinators use to reach this one (default -api)")
	fs.StringVar(&o.raftAddr, "raft", "127.0.0.1:7201", "host:port for Raft traffic (mutual TLS); other coordinators dial it as given")
	fs.StringVar(&o.p2pListen, "p2p", "/ip4/0.0.0.0/tcp/7301,/ip4/0.0.0.0/udp/7301/quic-v1", "comma-separated libp2p listen multiaddrs for the relay")
	fs.StringVar(&o.p2pAnnounce, "p2p-announce", "", "comma-separated multiaddrs to announce instead of the listen addresses")
	fs.StringVar(&o.metricsAddr, "metrics", "127.0.0.1:7401", "host:port for Prometheus metrics (/metrics); empty to disable")
	fs.StringVar(&o.join, "join", "", "comma-separated API addresses of running coordinators to join (first start only)")
	fs.BoolVar(&o.bootstrap, "bootstrap", false, "start a new one-member cluster if the data directory is empty")
	fs.BoolVar(&o.nonvoter, "nonvoter", false, "join as a non-voting member (serves reads and relays)")
	fs.StringVar(&o.caFile, "ca", "data/ca.pem", "cluster CA certificate")
	fs.StringVar(&o.certFile, "cert", "", "this coordinator's certificate (default <data>/tls/cert.pem)")
	fs.StringVar(&o.keyFile, "key", "", "this coordinator's private key (default <data>/tls/key.pem)")
	fs.StringVar(&o.trustedProxies, "trusted-proxies", "127.0.0.0/8,::1/128", "comma-separated CIDRs whose PROXY protocol headers are believed (the balancers)")
	fs.DurationVar(&o.srv.SessionTTL, "session-ttl", o.srv.SessionTTL, "how long a log-in lasts")
	fs.IntVar(&o.srv.MaxLoginFailures, "max-login-failures", o.srv.MaxLoginFailures, "failed log-ins to one account from one address in 15 minutes; past it the next waits a minute, then 2, 4 …")
	fs.IntVar(&o.srv.MaxAddrFailures, "max-addr-login-failures", o.srv.MaxAddrFailures, "failed log-ins from one address per minute, whatever the accounts; past it only devices with a device ticket for their account go on")
	fs.IntVar(&o.srv.HashQueue, "login-queue", o.srv.HashQueue, "sign-ups and log-ins that may wait for a core to hash their password; more are told to try again shortly")
	fs.IntVar(&o.srv.MaxSignUps, "max-signups-per-addr", o.srv.MaxSignUps, "sign-ups from one address per hour")
	var mboxCount uint
	var mboxBytes uint64
	fs.UintVar(&mboxCount, "mailbox-max-count", uint(o.srv.MailboxMaxCount), "envelopes that may wait for one recipient")
	fs.Uint64Var(&mboxBytes, "mailbox-max-bytes", o.srv.MailboxMaxBytes, "bytes that may wait for one recipient")
	var senderCount uint
	fs.UintVar(&senderCount, "mailbox-sender-max-count", uint(o.srv.SenderMaxCount), "envelopes one sender may have waiting for one recipient")
	fs.Uint64Var(&o.srv.SenderMaxBytes, "mailbox-sender-max-bytes", o.srv.SenderMaxBytes, "bytes one sender may have waiting for one recipient")
	var groupsCreated, groupsJoined uint
	fs.UintVar(&groupsCreated, "max-groups-created", uint(o.srv.MaxGroupsCreated), "groups one account may create")
	fs.UintVar(&groupsJoined, "max-groups-joined", uint(o.srv.MaxGroupsJoined), "groups one account may belong to")
	fs.DurationVar(&o.relay.MaxDuration, "relay-max-duration", o.relay.MaxDuration, "longest relayed connection")
	fs.Int64Var(&o.relay.MaxBytes, "relay-max-bytes", o.relay.MaxBytes, "most bytes relayed each way per connection")
	fs.IntVar(&o.relay.MaxReservations, "relay-max-reservations", o.relay.MaxReservations, "clients that may hold a relay reservation; 0 sizes it from a quarter of the memory and half the descriptors (libp2p's connection limits follow)")
	fs.IntVar(&o.relay.MaxConnsPerIP, "relay-max-conns-per-ip", o.relay.MaxConnsPerIP, "libp2p connections from one IP address (people behind one NAT share it)")
	fs.IntVar(&o.relay.MaxReservationsPerIP, "relay-max-reservations-per-ip", o.relay.MaxReservationsPerIP, "relay reservations from one IP address")
	fs.BoolVar(&o.relayOpen, "relay-open", false, "let any libp2p peer use the relay, not only the devices people published (capacity tests)")
	fs.IntVar(&o.relay.Circuits, "relay-circuits", o.relay.Circuits, "relayed connections carried at once, in all, each reserving 128 KiB of buffers (0: libp2p's memory-scaled size)")
	fs.DurationVar(&o.heartbeat, "raft-heartbeat-timeout", time.Second, "Raft heartbeat timeout")
	fs.BoolVar(&o.leaseReads, "lease-reads", true, "serve read barriers on the leader's lease; false confirms leadership with a heartbeat round for every batch of reads")
	fs.DurationVar(&o.election, "raft-election-timeout", time.Second, "Raft election timeout")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.logJSON, "log-json", false, "log JSON lines instead of text")
	fs.IntVar(&o.gcPercent, "gc-percent", 200, "the Go collector's GOGC (the GOGC environment variable wins): every cycle scans every goroutine's stack, four per person online, so fewer cycles leave more CPU for calls at the cost of a larger heap between them")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.id == "" {
		return nil, errors.New("-id is required")
	}
	o.srv.MailboxMaxCount, o.srv.MailboxMaxBytes = uint32(mboxCount), mboxBytes
	o.srv.SenderMaxCount, o.srv.MaxGroupsCreated, o.srv.MaxGroupsJoined = uint32(senderCount), uint32(groupsCreated), uint32(groupsJoined)
	if o.dataDir == "" {
		o.dataDir = filepath.Join("data", o.id)
	}
	if o.certFile == "" {
		o.certFile = filepath.Join(o.dataDir, "tls", "cert.pem")
	}
	if o.keyFile == "" {
		o.keyFile = filepath.Join(o.dataDir, "tls", "key.pem")
	}
	if o.apiAdvertise == "" {
		o.apiAdvertise = o.apiAddr
	}
	o.relay.Dir = o.dataDir
	o.relay.ListenAddrs = splitList(o.p2pListen)
	o.relay.Announce = splitList(o.p2pAnnounce)
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "coord:", err)
		os.Exit(2)
	}
	log := newLogger(o)
	if err := run(o, log); err != nil {
		log.Error("coordinator stopped", "err", err)
		os.Exit(1)
	}
}

func newLogger(o *options) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, hopts)
	if o.logJSON {
		h = slog.NewJSONHandler(os.Stderr, hopts)
	}
	return slog.New(h).With("coord", o.id)
}

func run(o *options, log *slog.Logger) error {
	if err := checkClusterIdentity(o.dataDir, o.caFile); err != nil {
		return err
	}
	serverTLS, err := pki.ServerConfig(o.certFile, o.keyFile, o.caFile)
	if err != nil {
		return err
	}
	clientTLS, err := pki.ClientConfig(o.caFile, o.certFile, o.keyFile)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	o.relay.Metrics = reg // libp2p's own: swarm, relay service, identify
	var acl *relay.ACL
	if !o.relayOpen {
		acl = &relay.ACL{}
		o.relay.Admit = acl
	}
	if os.Getenv("GOGC") == "" && o.gcPercent > 0 {
		debug.SetGCPercent(o.gcPercent)
	}
	if o.relay.MaxReservations <= 0 {
		o.relay.MaxReservations = relay.ReservationsFor(relay.MemoryLimit(), relay.FileLimit())
		log.Info("relay reservations sized from memory and descriptors", "reservations", o.relay.MaxReservations,
			"memory_bytes", relay.MemoryLimit(), "descriptors", relay.FileLimit())
	}
	p2p, err := relay.Start(o.relay)
	if err != nil {
		return err
	}
	defer p2p.Close()
	log.Info("relay listening", "peer_id", p2p.ID(), "addrs", relay.Addrs(p2p))

	hub := server.NewHub(nil)
	fwd := server.NewForwarder(clientTLS)
	defer fwd.Close()
	isNew := !store.HasExistingState(o.dataDir)
	st, err := store.Open(store.Config{
		ID: o.id, Dir: o.dataDir, RaftBind: o.raftAddr, APIAddr: o.apiAdvertise,
		ServerTLS: serverTLS, ClientTLS: clientTLS, Bootstrap: o.bootstrap,
		Forwarder: fwd, Publish: hub.Publish, Logger: log,
		HeartbeatTimeout: o.heartbeat, ElectionTimeout: o.election, LeaseReads: o.leaseReads,
	})
	if err != nil {
		return err
	}
	defer st.Close()
	if acl != nil {
		// The relay serves the devices people published in the directory,
		// and nobody else (a client publishes before it reserves).
		acl.SetCheck(func(p peer.ID) bool { return st.FSM().PeerPublished(p.String()) })
	}
	hub.SetMembers(func(group string) []string {
		_, m, _ := st.FSM().Members(group)
		return m
	})
	o.srv.Logger = log
	srv := server.New(o.srv, st, hub, fwd)

	// At most two handshakes a core compute at once: a reconnect storm
	// must not starve Raft (see api.AdmittedTLS).
	creds := api.AdmittedTLS(serverTLS, 2*runtime.GOMAXPROCS(0), handshakeWait)
	gs := grpc.NewServer(append(api.ServerWindowOptions(),
		grpc.Creds(creds),
		grpc.UnaryInterceptor(srv.UnaryInterceptor),
		grpc.StreamInterceptor(srv.StreamInterceptor),
		grpc.MaxRecvMsgSize(api.MaxMessageBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.ConnectionTimeout(10*time.Second),
		// No 32 KiB read buffer per connection: TLS under it already holds
		// a whole decrypted record, so HTTP/2's small frame reads come from
		// memory either way. Each person online costs that much less
		// (BenchmarkManyOnline).
		grpc.ReadBufferSize(0),
	)...)
	api.RegisterCoordinatorServer(gs, srv)
	api.RegisterClusterServer(gs, srv)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	// Server reflection: grpcurl and other tools list and call the API
	// without a copy of coord.proto.
	reflection.Register(gs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)

	ln, err := listenAPI(o.apiAddr, o.trustedProxies)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- gs.Serve(ln) }()
	log.Info("API listening", "addr", ln.Addr().String(), "raft", st.RaftAddr())

	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	server.RegisterMetrics(reg)
	registerStoreMetrics(reg, st)
	registerHandshakeMetrics(reg, api.Handshakes(creds))
	if o.metricsAddr != "" {
		mln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", o.metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { serveErr <- ms.Serve(mln) }()
		defer ms.Close()
		log.Info("metrics listening", "addr", mln.Addr().String())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if isNew && o.join != "" {
		if err := joinCluster(ctx, log, o, clientTLS, st.RaftAddr()); err != nil {
			return err
		}
	}
	go registerSelf(ctx, log, st, &statepb.Node{
		Id: o.id, ApiAddr: o.apiAdvertise, RaftAddr: st.RaftAddr(),
		PeerId: p2p.ID().String(), RelayAddrs: relay.Addrs(p2p),
	})
	go reportHealth(ctx, st, hs)

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-serveErr:
		return fmt.Errorf("server stopped: %w", err)
	}
	hs.Shutdown()
	st.TransferLeadership()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		gs.Stop()
	}
	return nil
}

// listenAPI accepts PROXY protocol headers (v1 or v2) from the trusted
// balancers only, so rate limits and observed addresses use the real client
// address. Connections from trusted addresses may also come without a header
// (health checks, coordinators forwarding to the leader); a TLS ClientHello
// cannot be mistaken for a PROXY signature, so nothing is guessed.
func listenAPI(addr, trusted string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for the API on %s: %w", addr, err)
	}
	var nets []*net.IPNet
	for _, c := range splitList(trusted) {
		_, n, err := net.ParseCIDR(c)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("-trusted-proxies %q: %w", c, err)
		}
		nets = append(nets, n)
	}
	policy := func(opts proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
		if tcp, ok := opts.Upstream.(*net.TCPAddr); ok {
			for _, n := range nets {
				if n.Contains(tcp.IP) {
					return proxyproto.USE, nil
				}
			}
		}
		return proxyproto.REJECT, nil
	}
	return &proxyproto.Listener{Listener: ln, ConnPolicy: policy, ReadHeaderTimeout: 5 * time.Second}, nil
}

// checkClusterIdentity refuses a data directory made under another cluster's
// CA: its Raft state and tokens belong to that cluster.
func checkClusterIdentity(dir, caFile string) error {
	_, fp, err := pki.CAPool(caFile)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	marker := filepath.Join(dir, "cluster-ca.sha256")
	have, err := os.ReadFile(marker)
	if errors.Is(err, os.ErrNotExist) {
		if store.HasExistingState(dir) {
			return fmt.Errorf("data directory %s holds cluster state but no %s; refusing to guess which cluster it belongs to", dir, filepath.Base(marker))
		}
		return os.WriteFile(marker, []byte(fp+"\n"), 0o600)
	}
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(have)) != fp {
		return fmt.Errorf("data directory %s belongs to another cluster (CA %.16s…), not the one whose CA is %s (%.16s…)",
			dir, strings.TrimSpace(string(have)), caFile, fp)
	}
	return nil
}

func joinCluster(ctx context.Context, log *slog.Logger, o *options, clientTLS *tls.Config, raftAddr string) error {
	addrs := splitList(o.join)
	req := &api.JoinRequest{Id: o.id, RaftAddr: raftAddr, ApiAddr: o.apiAdvertise, Nonvoter: o.nonvoter}
	deadline := time.Now().Add(2 * time.Minute)
	for attempt := 0; ; attempt++ {
		for _, a := range addrs {
			conn, err := api.DialTLS(a, clientTLS)
			if err != nil {
				return fmt.Errorf("join %s: %w", a, err)
			}
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			_, err = api.NewClusterClient(conn).Join(cctx, req)
			cancel()
			conn.Close()
			if err == nil {
				log.Info("joined the cluster", "via", a)
				return nil
			}
			log.Warn("join attempt failed", "via", a, "err", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("could not join the cluster through %s", o.join)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
		}
	}
}

// registerSelf records this coordinator's addresses in the cluster state once
// a leader exists, and keeps trying until it has.
func registerSelf(ctx context.Context, log *slog.Logger, st *store.Store, node *statepb.Node) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := st.Register(cctx, node)
		cancel()
		if err == nil {
			log.Info("registered with the cluster", "relay_addrs", node.RelayAddrs)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// reportHealth serves the gRPC health protocol: SERVING while this
// coordinator knows a leader and holds the cluster's identity.
func reportHealth(ctx context.Context, st *store.Store, hs *health.Server) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		s := st.Status()
		now := healthpb.HealthCheckResponse_NOT_SERVING
		if s.HasLeader && len(s.ClusterID) > 0 {
			now = healthpb.HealthCheckResponse_SERVING
		}
		if now != last {
			hs.SetServingStatus("", now)
			hs.SetServingStatus(api.Coordinator_ServiceDesc.ServiceName, now)
			last = now
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func registerStoreMetrics(reg prometheus.Registerer, st *store.Store) {
	gauge := func(name, help string, f func(store.Status) float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "e2em", Subsystem: "raft", Name: name, Help: help,
		}, func() float64 { return f(st.Status()) }))
	}
	gauge("leader", "1 while this coordinator leads.", func(s store.Status) float64 { return b2f(s.LeaderReady) })
	gauge("has_leader", "1 while a leader is known.", func(s store.Status) float64 { return b2f(s.HasLeader) })
	gauge("commit_index", "Raft commit index.", func(s store.Status) float64 { return float64(s.CommitIndex) })
	gauge("applied_index", "Last index applied to badger.", func(s store.Status) float64 { return float64(s.Applied) })
	gauge("members", "Servers in the Raft configuration.", func(s store.Status) float64 { return float64(len(s.Members)) })
}

// handshakeWait is how long a TLS handshake waits for a slot before the
// connection is refused (the client tries again after its backoff): well
// inside the 10 s a connection has for its handshake.
const handshakeWait = 5 * time.Second

func registerHandshakeMetrics(reg prometheus.Registerer, hs *api.HandshakeStats) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "e2em", Subsystem: "api", Name: "handshakes_total",
			Help: "TLS handshakes of API connections admitted to compute."}, func() float64 { return float64(hs.Admitted.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "e2em", Subsystem: "api", Name: "handshakes_refused_total",
			Help: "TLS handshakes refused after waiting for a slot (a reconnect storm past what this coordinator computes)."}, func() float64 { return float64(hs.Refused.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "e2em", Subsystem: "api", Name: "handshakes_waiting",
			Help: "TLS handshakes waiting for a slot now."}, func() float64 { return float64(hs.Waiting.Load()) }),
	)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
