package balance

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Checker runs active health checks against every backend in a pool: the
// gRPC health protocol over TLS (the coordinators' own), or a TCP connect.
type Checker struct {
	Pool     *Pool
	Interval time.Duration
	Timeout  time.Duration
	// TLS for gRPC checks; nil means TCP connect checks only.
	TLS *tls.Config
	// Service is the gRPC health service name asked about ("" = server).
	Service string
	Log     *slog.Logger

	mu      sync.Mutex
	cancels map[*Backend]context.CancelFunc
	ctx     context.Context
}

// Run checks until ctx ends, following backends as they come and go.
func (c *Checker) Run(ctx context.Context) {
	c.mu.Lock()
	c.ctx = ctx
	c.cancels = map[*Backend]context.CancelFunc{}
	c.mu.Unlock()
	c.Pool.OnChange(func(b *Backend, added bool) {
		if added {
			c.start(b)
		} else {
			c.stop(b)
		}
	})
	for _, b := range c.Pool.Backends() {
		c.start(b)
	}
	<-ctx.Done()
}

func (c *Checker) start(b *Backend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.cancels[b]; ok || c.ctx == nil {
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	c.cancels[b] = cancel
	go c.loop(ctx, b)
}

func (c *Checker) stop(b *Backend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cancel, ok := c.cancels[b]; ok {
		cancel()
		delete(c.cancels, b)
	}
}

func (c *Checker) loop(ctx context.Context, b *Backend) {
	var conn *grpc.ClientConn
	if c.TLS != nil {
		cfg := c.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(b.Addr)
		}
		var err error
		conn, err = grpc.NewClient(b.Addr,
			grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
			// Reconnect at the check interval, so a backend that comes
			// back is seen at the next check rather than after gRPC's
			// default two-minute backoff.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: c.Interval / 4, Multiplier: 1.6, MaxDelay: c.Interval},
				MinConnectTimeout: c.Timeout,
			}))
		if err != nil {
			c.Log.Error("health check client", "backend", b.Addr, "err", err)
			return
		}
		defer conn.Close()
		go c.watchConnection(ctx, b, conn)
	}
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for {
		c.checkOnce(ctx, b, conn)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchConnection is passive health on the checker's own connection: when
// an established connection to the backend breaks (the process died, the
// host went away), the backend is marked failed at once instead of at the
// next check.
func (c *Checker) watchConnection(ctx context.Context, b *Backend, conn *grpc.ClientConn) {
	state := conn.GetState()
	for conn.WaitForStateChange(ctx, state) {
		next := conn.GetState()
		if state == connectivity.Ready && next != connectivity.Ready {
			if c.Pool.ReportFailure(b) {
				c.Log.Warn("backend down (connection lost)", "backend", b.Addr)
			}
		}
		state = next
	}
}

func (c *Checker) checkOnce(ctx context.Context, b *Backend, conn *grpc.ClientConn) {
	cctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var err error
	if conn == nil {
		var nc net.Conn
		nc, err = (&net.Dialer{}).DialContext(cctx, "tcp", b.Addr)
		if err == nil {
			nc.Close()
		}
	} else {
		var resp *healthpb.HealthCheckResponse
		resp, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: c.Service})
		if err == nil && resp.Status != healthpb.HealthCheckResponse_SERVING {
			err = errNotServing{resp.Status}
		}
	}
	if ctx.Err() != nil {
		return
	}
	was := b.Healthy()
	if err != nil {
		if c.Pool.ReportFailure(b) {
			c.Log.Warn("backend down", "backend", b.Addr, "err", err)
		}
		return
	}
	c.Pool.ReportSuccess(b)
	if !was && b.Healthy() {
		c.Log.Info("backend up", "backend", b.Addr)
	}
}

type errNotServing struct {
	s healthpb.HealthCheckResponse_ServingStatus
}

func (e errNotServing) Error() string { return "health status " + e.s.String() }
