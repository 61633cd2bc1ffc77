// Package proxy owns the balancer's data path: accepting client
// connections, enforcing the connection limit, dialing the backend the pool
// picks (and another when a dial fails), optionally sending a PROXY protocol
// v2 header, splicing bytes both ways without copying them through user
// space where the kernel allows, closing idle connections, and draining on
// shutdown. It never looks at the bytes.
package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/e2em/e2em/lb/balance"
)

// Options tune a Server.
type Options struct {
	MaxConns    int64         // open client connections at once (0: no limit)
	IdleTimeout time.Duration // close a connection with no bytes either way for this long
	DialTimeout time.Duration
	DialRetries int  // other backends tried after a failed dial
	SendProxy   bool // send a PROXY protocol v2 header to the backend
	Log         *slog.Logger
}

// Server proxies connections from its listeners to the pool's backends.
type Server struct {
	pool     *balance.Pool
	opts     Options
	active   atomic.Int64
	Accepted atomic.Uint64
	Rejected atomic.Uint64 // over the connection limit
	NoRoute  atomic.Uint64 // no backend could take the connection

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	closing   atomic.Bool
}

// New makes a server over pool.
func New(pool *balance.Pool, opts Options) *Server {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 2 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Server{pool: pool, opts: opts, conns: map[net.Conn]struct{}{}}
}

// Active is the number of open client connections.
func (s *Server) Active() int64 { return s.active.Load() }

// Serve accepts on ln until it is closed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors: back off instead of spinning.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.opts.Log.Warn("accept failed; backing off", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if s.opts.MaxConns > 0 && s.active.Load() >= s.opts.MaxConns {
			s.Rejected.Add(1)
			c.Close()
			continue
		}
		s.Accepted.Add(1)
		s.active.Add(1)
		s.track(c, true)
		s.wg.Add(1)
		go s.handle(c)
	}
}

func (s *Server) track(c net.Conn, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

func (s *Server) handle(client net.Conn) {
	defer s.wg.Done()
	defer s.active.Add(-1)
	defer s.track(client, false)
	defer client.Close()
	backend, upstream := s.dial(client)
	if upstream == nil {
		s.NoRoute.Add(1)
		return
	}
	defer upstream.Close()
	backend.Active.Add(1)
	backend.Total.Add(1)
	defer backend.Active.Add(-1)
	s.track(upstream, true)
	defer s.track(upstream, false)
	splice(client, upstream, s.opts.IdleTimeout, &backend.BytesIn, &backend.BytesOut)
}

// dial connects to a backend, marking a backend that refuses as failed
// (passive health) and trying another.
func (s *Server) dial(client net.Conn) (*balance.Backend, net.Conn) {
	var tried []*balance.Backend
	for attempt := 0; attempt <= s.opts.DialRetries; attempt++ {
		b, err := s.pool.Pick(tried)
		if err != nil {
			s.opts.Log.Warn("no backend for connection", "client", client.RemoteAddr().String(), "err", err)
			return nil, nil
		}
		tried = append(tried, b)
		d := net.Dialer{Timeout: s.opts.DialTimeout, KeepAlive: -1}
		up, err := d.Dial("tcp", b.Addr)
		if err != nil {
			if s.pool.ReportFailure(b) {
				s.opts.Log.Warn("backend down (dial failed)", "backend", b.Addr, "err", err)
			}
			continue
		}
		if s.opts.SendProxy {
			hdr := proxyproto.HeaderProxyFromAddrs(2, client.RemoteAddr(), client.LocalAddr())
			if _, err := hdr.WriteTo(up); err != nil {
				up.Close()
				s.pool.ReportFailure(b)
				continue
			}
		}
		return b, up
	}
	return nil, nil
}

// splice copies both ways until both sides finish or the connection idles.
// Each direction starts with plain reads and writes through a small buffer,
// the cheapest way to move the short messages of an RPC. Once a read fills
// the buffer the direction is carrying bulk data and switches to
// (*net.TCPConn).ReadFrom, which moves bytes between the two sockets with
// splice(2) and never copies them through user space. Each direction wakes
// at least every tick to account bytes and check the shared idle clock.
func splice(client, upstream net.Conn, idle time.Duration, in, out *atomic.Uint64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	tick := time.Second
	if idle > 0 && idle/4 < tick {
		tick = max(idle/4, 10*time.Millisecond)
	}
	var ended atomic.Int32
	closeBoth := func() {
		client.Close()
		upstream.Close()
	}
	pipe := func(dst, src net.Conn, counter *atomic.Uint64) {
		bufp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bufp)
		buf := *bufp
		bulk := false
		// A backend answers what the client sends: its first read would
		// only find nothing yet (see awaitFirstRead).
		first := dst == client
		var deadline time.Time
		for {
			now := time.Now()
			if deadline.Sub(now) < tick/2 {
				deadline = now.Add(tick)
				src.SetReadDeadline(deadline)
			}
			var n int64
			var err error
			if bulk {
				n, err = copyChunk(dst, src)
			} else {
				var r int
				if first {
					first = false
					err = awaitFirstRead(src)
				}
				if err == nil {
					r, err = src.Read(buf)
				}
				if r > 0 {
					if _, werr := dst.Write(buf[:r]); werr != nil {
						err = werr
					}
					bulk = r == len(buf)
				}
				n = int64(r)
			}
			if n > 0 {
				counter.Add(uint64(n))
				last.Store(time.Now().UnixNano())
			}
			if err == nil {
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if idle > 0 && time.Since(time.Unix(0, last.Load())) >= idle {
					closeBoth()
					return
				}
				deadline = time.Time{}
				continue
			}
			// The end of this direction: pass the half-close on and let the
			// other direction finish; on an error, end both. When the other
			// direction has already ended, both sockets are about to be
			// closed (which sends the FIN), so the shutdown is skipped.
			cw, ok := dst.(interface{ CloseWrite() error })
			switch {
			case !ok || !errors.Is(err, io.EOF):
				closeBoth()
			case ended.Add(1) < 2:
				cw.CloseWrite()
			}
			return
		}
	}
	done := make(chan struct{})
	go func() {
		pipe(upstream, client, in)
		close(done)
	}()
	pipe(client, upstream, out)
	<-done
}

// awaitFirstRead waits until a freshly dialed connection has something to
// read (data, end or error), without the read(2) that Go's Read tries
// first and that would only answer EAGAIN: the backend has not been sent
// anything yet. That is one system call of the ~25 a proxied connection
// costs. It is safe only on a connection nothing has been read from: the
// poller is edge-triggered, and only there is every arrival still to come.
func awaitFirstRead(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	waited := false
	return rc.Read(func(uintptr) bool {
		if waited {
			return true
		}
		waited = true
		return false
	})
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// copyChunk moves what arrives before the read deadline; io.EOF at the end.
func copyChunk(dst, src net.Conn) (int64, error) {
	lr := &io.LimitedReader{R: src, N: 1 << 40}
	var n int64
	var err error
	if rf, ok := dst.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(lr)
	} else {
		n, err = io.Copy(dst, lr)
	}
	if err == nil {
		err = io.EOF // ReadFrom returns nil at the end of src
	}
	return n, err
}

// Listen opens a listener for clients. TCP keep-alive probes are off: the
// idle timeout ends dead connections, and the probes' setup costs three
// system calls per connection.
func Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}

// Drain stops accepting, lets open connections finish until ctx ends, then
// closes what is left. It returns how many connections it cut.
func (s *Server) Drain(ctx context.Context) int {
	s.closing.Store(true)
	s.mu.Lock()
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
	}
	s.mu.Lock()
	cut := 0
	for c := range s.conns {
		c.Close()
		cut++
	}
	s.mu.Unlock()
	<-done
	return cut / 2
}
