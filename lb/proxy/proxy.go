// Package proxy owns the balancer's data path: accepting client
// connections, enforcing the connection limit, connecting to the backend the
// pool picks (and another when a connect fails), optionally sending a PROXY
// protocol v2 header, moving bytes both ways, passing half-closes on,
// closing idle connections, and draining on shutdown. It never looks at the
// bytes.
//
// The bytes move in a few event loops on epoll (loop_linux.go), the way
// HAProxy and nginx move them, rather than in two goroutines per connection:
// Go's net package spends about a third more system calls per proxied
// connection (see docs/benchmarks.md), and a connection's bytes cross no
// goroutine hand-off on their way through.
package proxy

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/e2em/e2em/lb/balance"
)

// Options tune a Server.
type Options struct {
	MaxConns int64 // open client connections at once (0: no limit)
	// Per client address: open connections, and new connections a second
	// (with bursts of NewConnBurst); 0 is no limit.
	MaxConnsPerSource int64
	NewConnsPerSec    float64
	NewConnBurst      int
	IdleTimeout       time.Duration // close a connection with no bytes either way for this long
	DialTimeout       time.Duration
	DialRetries       int  // other backends tried after a failed connect
	SendProxy         bool // send a PROXY protocol v2 header to the backend
	// Loops is how many event loops (each a thread at work) move bytes;
	// 0 means one per CPU the Go runtime uses.
	Loops int
	Log   *slog.Logger
}

// Server proxies connections from its listener to the pool's backends.
type Server struct {
	pool     *balance.Pool
	opts     Options
	active   atomic.Int64
	Accepted atomic.Uint64
	Rejected atomic.Uint64 // over the connection limit
	// RejectedSource counts connections refused by a per-address limit.
	RejectedSource atomic.Uint64
	sources        *sources
	NoRoute        atomic.Uint64 // no backend could take the connection

	mu      sync.Mutex
	serving bool
	loops   []*loop
	closing atomic.Bool // Drain began: stop accepting
	cutting atomic.Bool // Drain's time is up: close what is open
	cut     atomic.Int64
	served  chan struct{} // closed when every loop has ended
}

// New makes a server over pool.
func New(pool *balance.Pool, opts Options) *Server {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 2 * time.Second
	}
	if opts.Loops <= 0 {
		opts.Loops = runtime.GOMAXPROCS(0)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Server{pool: pool, opts: opts, served: make(chan struct{}),
		sources: newSources(opts.MaxConnsPerSource, opts.NewConnsPerSec, opts.NewConnBurst)}
}

// Active is the number of open client connections.
func (s *Server) Active() int64 { return s.active.Load() }

// Serve proxies the connections ln accepts until Drain ends; it closes ln.
// A Server serves one listener.
func (s *Server) Serve(ln *Listener) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("proxy: Serve called twice")
	}
	s.serving = true
	if s.closing.Load() {
		s.mu.Unlock()
		close(s.served)
		return ln.Close()
	}
	loops, err := startLoops(s, ln)
	if err != nil {
		s.mu.Unlock()
		close(s.served)
		ln.Close()
		return err
	}
	s.loops = loops
	s.mu.Unlock()

	errs := make(chan error, len(loops))
	for _, l := range loops {
		go func() { errs <- l.run() }()
	}
	var first error
	for range loops {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	ln.Close()
	s.mu.Lock()
	for _, l := range loops {
		l.release()
	}
	s.loops = nil
	s.mu.Unlock()
	close(s.served)
	return first
}

// wakeLoops makes every loop look at the server's state; after Serve has
// ended there are none.
func (s *Server) wakeLoops() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.loops {
		l.wake()
	}
}

// Drain stops accepting (the listener closes, so new connections are
// refused), lets open connections finish until ctx ends, then closes what
// is left. It returns how many connections it cut.
func (s *Server) Drain(ctx context.Context) int {
	s.mu.Lock()
	s.closing.Store(true)
	serving := s.serving
	s.mu.Unlock()
	if !serving {
		return 0
	}
	s.wakeLoops()
	select {
	case <-s.served:
		return 0
	case <-ctx.Done():
	}
	s.cutting.Store(true)
	s.wakeLoops()
	<-s.served
	return int(s.cut.Load())
}
