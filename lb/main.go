// Command lb is e2em's layer-4 balancer in front of the coordinators' API
// port. It never terminates TLS. This file is flags, the config file, the
// admin API, metrics and signals; lb/balance and lb/proxy do the work.
package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/e2em/e2em/internal/pki"
	"github.com/e2em/e2em/lb/balance"
	"github.com/e2em/e2em/lb/proxy"
)

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

type options struct {
	listen, metrics, configFile, policy, healthCA, healthServerName, healthService, healthMode string
	adminTokenFile                                                                             string
	backends                                                                                   listFlag
	pool                                                                                       balance.Options
	proxy                                                                                      proxy.Options
	healthInterval, healthTimeout, drainTimeout                                                time.Duration
	logJSON                                                                                    bool
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("lb", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7000", "host:port clients connect to")
	fs.Var(&o.backends, "backend", "backend host:port (repeat or comma-separate)")
	fs.StringVar(&o.configFile, "config", "", "file of backends, one host:port per line (# comments); re-read on SIGHUP")
	fs.StringVar(&o.metrics, "metrics", "127.0.0.1:7001", "host:port for /metrics and the admin API (/backends); empty to disable")
	fs.StringVar(&o.policy, "policy", "roundrobin", "roundrobin, leastconn or p2c")
	fs.StringVar(&o.healthMode, "health", "grpc", "active health check: grpc (the gRPC health protocol over TLS) or tcp (connect)")
	fs.StringVar(&o.healthCA, "health-ca", "data/ca.pem", "CA that signs the backends' certificates (gRPC checks)")
	fs.StringVar(&o.healthServerName, "health-server-name", "", "TLS server name for checks (default: the backend's host)")
	fs.StringVar(&o.healthService, "health-service", "", "gRPC health service name to ask about (\"\" = the whole server)")
	fs.DurationVar(&o.healthInterval, "health-interval", time.Second, "time between active checks")
	fs.DurationVar(&o.healthTimeout, "health-timeout", time.Second, "time a check may take")
	fs.IntVar(&o.pool.Rise, "rise", 2, "good checks in a row that bring a backend back")
	fs.IntVar(&o.pool.Fall, "fall", 1, "failed checks or dials in a row that take a backend out")
	fs.DurationVar(&o.pool.SlowStart, "slow-start", 10*time.Second, "ramp time for a backend that just became healthy")
	fs.Int64Var(&o.pool.MaxConnsPerBackend, "max-conns-per-backend", 0, "open connections per backend (0: no limit)")
	fs.Int64Var(&o.proxy.MaxConns, "max-conns", 20000, "open client connections (0: no limit); more are closed at once")
	fs.Int64Var(&o.proxy.MaxConnsPerSource, "max-conns-per-source", 1000, "open connections from one client address (0: no limit)")
	fs.Float64Var(&o.proxy.NewConnsPerSec, "new-conns-per-source", 200, "new connections a second from one client address (0: no limit)")
	fs.IntVar(&o.proxy.NewConnBurst, "new-conns-burst", 1000, "new connections one client address may open at once before -new-conns-per-source applies")
	fs.StringVar(&o.adminTokenFile, "admin-token-file", "", "file holding the bearer token the admin API (/backends, /debug/pprof/) requires; without it the admin API is off")
	fs.DurationVar(&o.proxy.IdleTimeout, "idle-timeout", 5*time.Minute, "close a connection with no bytes either way for this long (0: never)")
	fs.DurationVar(&o.proxy.DialTimeout, "connect-timeout", 2*time.Second, "time to connect to a backend")
	fs.IntVar(&o.proxy.DialRetries, "retries", 2, "other backends tried when a connect fails")
	fs.IntVar(&o.proxy.Loops, "loops", 0, "event loops moving bytes, each a thread at work (0: one per CPU)")
	fs.BoolVar(&o.proxy.SendProxy, "send-proxy", true, "send a PROXY protocol v2 header so backends see the client's address")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long open connections may finish")
	fs.BoolVar(&o.logJSON, "log-json", false, "log JSON lines")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	p, err := balance.ParsePolicy(o.policy)
	if err != nil {
		return nil, err
	}
	o.pool.Policy = p
	if o.healthMode != "grpc" && o.healthMode != "tcp" {
		return nil, fmt.Errorf("-health must be grpc or tcp, not %q", o.healthMode)
	}
	if len(o.backends) == 0 && o.configFile == "" {
		return nil, errors.New("give at least one -backend or a -config file")
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lb:", err)
		os.Exit(2)
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if o.logJSON {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	log := slog.New(h).With("part", "lb")
	if err := run(o, log); err != nil {
		log.Error("balancer stopped", "err", err)
		os.Exit(1)
	}
}

func (o *options) allBackends() ([]string, error) {
	all := append([]string{}, o.backends...)
	if o.configFile != "" {
		fromFile, err := balance.ReadBackendsFile(o.configFile)
		if err != nil {
			return nil, fmt.Errorf("read backends: %w", err)
		}
		all = append(all, fromFile...)
	}
	return all, nil
}

func run(o *options, log *slog.Logger) error {
	addrs, err := o.allBackends()
	if err != nil {
		return err
	}
	pool := balance.NewPool(o.pool)
	checker := &balance.Checker{Pool: pool, Interval: o.healthInterval, Timeout: o.healthTimeout, Service: o.healthService, Log: log}
	if o.healthMode == "grpc" {
		cfg, err := pki.ClientConfig(o.healthCA, "", "")
		if err != nil {
			return fmt.Errorf("health checks: %w", err)
		}
		cfg.ServerName = o.healthServerName
		checker.TLS = cfg
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go checker.Run(ctx)
	pool.Set(addrs)

	o.proxy.Log = log
	srv := proxy.New(pool, o.proxy)
	ln, err := proxy.Listen(o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("balancing", "listen", ln.Addr().String(), "backends", addrs, "policy", o.pool.Policy)
	stopWarning := make(chan struct{})
	defer close(stopWarning)
	go warnNearCapacity(stopWarning, 10*time.Second, func() capacity { return currentCapacity(srv.Active(), o.proxy.MaxConns) }, log)

	if o.metrics != "" {
		mln, err := net.Listen("tcp", o.metrics)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", o.metrics, err)
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newCollector(pool, srv, o.proxy.MaxConns))
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		token, err := readAdminToken(o.adminTokenFile)
		if err != nil {
			return err
		}
		mux.Handle("/backends", adminOnly(token, adminBackends(pool, log)))
		mux.Handle("/debug/pprof/", adminOnly(token, http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/profile", adminOnly(token, http.HandlerFunc(pprof.Profile)))
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { serveErr <- ms.Serve(mln) }()
		defer ms.Close()
		log.Info("metrics and admin API", "addr", mln.Addr().String())
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	for {
		select {
		case err := <-serveErr:
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				addrs, err := o.allBackends()
				if err != nil {
					log.Error("reload failed; keeping the backends", "err", err)
					continue
				}
				added, removed := pool.Set(addrs)
				log.Info("reloaded", "added", added, "removed", removed)
				continue
			}
			log.Info("draining", "open", srv.Active(), "timeout", o.drainTimeout)
			dctx, dcancel := context.WithTimeout(context.Background(), o.drainTimeout)
			cut := srv.Drain(dctx)
			dcancel()
			log.Info("drained", "cut", cut)
			return nil
		}
	}
}

// readAdminToken reads the admin API's token ("" when no file is given:
// the admin API is then off).
func readAdminToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read the admin token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 16 {
		return "", fmt.Errorf("the admin token in %s is shorter than 16 characters", path)
	}
	return token, nil
}

// adminOnly lets through only requests that carry the admin token and do
// not come from a web browser: a page the operator visits must not be
// able to add a backend with a simple cross-site request.
func adminOnly(token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case token == "":
			http.Error(w, "the admin API is off: start the balancer with -admin-token-file", http.StatusForbidden)
		case r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Mode") != "":
			http.Error(w, "the admin API does not answer web browsers", http.StatusForbidden)
		case subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+token)) != 1:
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "give the admin token: Authorization: Bearer <token>", http.StatusUnauthorized)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// adminBackends serves GET (list with state), POST ?addr= (add) and
// DELETE ?addr= (remove, draining its connections).
func adminBackends(pool *balance.Pool, log *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		addr := r.URL.Query().Get("addr")
		switch r.Method {
		case http.MethodGet:
			type row struct {
				Addr    string `json:"addr"`
				Healthy bool   `json:"healthy"`
				Active  int64  `json:"active"`
				Total   uint64 `json:"total"`
			}
			var rows []row
			for _, b := range pool.Backends() {
				rows = append(rows, row{b.Addr, b.Healthy(), b.Active.Load(), b.Total.Load()})
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(rows)
		case http.MethodPost:
			if _, _, err := net.SplitHostPort(addr); err != nil {
				http.Error(w, "give ?addr=host:port", http.StatusBadRequest)
				return
			}
			pool.Add(addr)
			log.Info("backend added at run time", "backend", addr)
			w.WriteHeader(http.StatusNoContent)
		case http.MethodDelete:
			if !pool.Remove(addr) {
				http.Error(w, "no such backend", http.StatusNotFound)
				return
			}
			log.Info("backend removed at run time", "backend", addr)
			w.WriteHeader(http.StatusNoContent)
		default:
			http.Error(w, "GET, POST or DELETE", http.StatusMethodNotAllowed)
		}
	}
}

// collector exposes per-backend state for Prometheus; the set of backends
// changes at run time, so it reads them at every scrape.
type collector struct {
	pool                                              *balance.Pool
	srv                                               *proxy.Server
	active, total, bytes, healthy, failures, accepted *prometheus.Desc
	rejected, open, limit, used, panics               *prometheus.Desc
	maxConns                                          int64
}

func newCollector(pool *balance.Pool, srv *proxy.Server, maxConns int64) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("e2em_lb_"+name, help, labels, nil)
	}
	return &collector{
		pool: pool, srv: srv, maxConns: maxConns,
		active:   d("backend_active_connections", "Open connections to a backend.", "backend"),
		total:    d("backend_connections_total", "Connections proxied to a backend.", "backend"),
		bytes:    d("backend_bytes_total", "Bytes proxied, by direction (in: client to backend).", "backend", "direction"),
		healthy:  d("backend_healthy", "1 if the backend takes new connections.", "backend"),
		failures: d("backend_failures_total", "Failed dials and health checks.", "backend"),
		accepted: d("connections_accepted_total", "Client connections accepted."),
		rejected: d("connections_rejected_total", "Client connections refused, by reason.", "reason"),
		open:     d("connections_open", "Open client connections."),
		limit:    d("connections_limit", "Client connections at which new ones are refused: the lesser of -max-conns and what the descriptors left allow (two per connection)."),
		used:     d("capacity_used_ratio", "connections_open / connections_limit: add a balancer (or raise the limits) well before 1."),
		panics:   d("panic_connections_total", "Connections sent on while no backend passed its checks (panic mode: spread over all rather than refused)."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.active, c.total, c.bytes, c.healthy, c.failures, c.accepted, c.rejected, c.open, c.limit, c.used, c.panics} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, b := range c.pool.Backends() {
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(b.Active.Load()), b.Addr)
		ch <- prometheus.MustNewConstMetric(c.total, prometheus.CounterValue, float64(b.Total.Load()), b.Addr)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(b.BytesIn.Load()), b.Addr, "in")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(b.BytesOut.Load()), b.Addr, "out")
		h := 0.0
		if b.Healthy() {
			h = 1
		}
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, h, b.Addr)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(b.Failures.Load()), b.Addr)
	}
	ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(c.srv.Accepted.Load()))
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(c.srv.Rejected.Load()), "limit")
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(c.srv.RejectedSource.Load()), "source")
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(c.srv.NoRoute.Load()), "no_backend")
	ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(c.srv.Active()))
	capa := currentCapacity(c.srv.Active(), c.maxConns)
	ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(capa.limit()))
	ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, capa.used())
	ch <- prometheus.MustNewConstMetric(c.panics, prometheus.CounterValue, float64(c.pool.Panics()))
}
