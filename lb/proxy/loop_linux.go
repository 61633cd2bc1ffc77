package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/e2em/e2em/lb/balance"
)

// side is one socket of a proxied connection. readable and writable are
// what the last edge-triggered events and system calls said: a read or
// write is tried only when it can succeed, and an answer of EAGAIN clears
// the flag until the next event.
type side struct {
	fd       int
	readable bool
	writable bool
	rdhup    bool   // the peer's end of stream is queued behind any data
	eof      bool   // everything this side will send has been read
	shut     bool   // writing is shut down (the half-close was passed on)
	pending  []byte // read from the other side, not yet written to this one
	buf      []byte // pending's storage, kept while the connection lives
	// Once the other side sends bulk data, its bytes reach this one
	// through a pipe with splice(2), never entering user space.
	pipe  *pipe
	piped int // bytes in the pipe, not yet written to this side
}

// drained reports whether everything read for this side was written to it.
func (s *side) drained() bool { return len(s.pending) == 0 && s.piped == 0 }

type pipe struct{ r, w int }

// conn is one client connection and its backend connection.
type conn struct {
	client, backend side
	be              *balance.Backend // nil until a connect starts
	tried           []*balance.Backend
	connecting      bool
	clientAddr      unix.Sockaddr
	source          netip.Addr // the client's address, as the per-address limits count it
	started, last   int64      // connect start and last bytes moved, unix nanoseconds
	index           int        // in loop.conns
	closed          bool
	queued          bool // in loop.again
}

// finished reports whether both directions delivered their end of stream.
func (c *conn) finished() bool {
	return c.client.eof && c.backend.eof && c.client.drained() && c.backend.drained()
}

const (
	scratchSize  = 64 << 10
	spareBuffers = 64
	sparePipes   = 64
	spliceFlags  = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	resolveTTL   = 30 * time.Second
	maxEvents    = 256
	// turnReads is how many reads one direction gets before the loop
	// serves other connections: a fast sender and receiver would
	// otherwise keep the loop to themselves.
	turnReads = 8
	// turnAccepts is how many connections one turn accepts, so that a
	// flood of new ones does not stall those already open.
	turnAccepts   = 64
	connectEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
)

// loop is one event loop: an epoll instance, the connections it accepted,
// and the state only its goroutine touches.
type loop struct {
	s       *Server
	ln      *Listener
	epfd    int
	wakefd  int
	watched bool // the listener is in this loop's epoll set

	byFD    []*conn // indexed by descriptor
	conns   []*conn
	again   []*conn // used up their turn with bytes still to read
	later   []*conn // again's previous contents, while they are served
	toClose []int   // closed after the current batch of events, so no descriptor is reused within it
	scratch []byte
	spare   [][]byte
	pipes   []*pipe // empty pipes kept for the next bulk connection
	events  []unix.EpollEvent
	addrs   *resolver // shared by the loops

	now, nextSweep int64
	tick           time.Duration
	acceptPaused   bool // out of descriptors: accept again at the next tick
	acceptMore     bool // the listener is ready (an event, or a turn that ended early)
}

func startLoops(s *Server, ln *Listener) ([]*loop, error) {
	tick := time.Second
	if s.opts.IdleTimeout > 0 {
		tick = min(tick, s.opts.IdleTimeout/4)
	}
	tick = max(min(tick, s.opts.DialTimeout/4), 10*time.Millisecond)
	var loops []*loop
	addrs := newResolver(resolveTTL)
	for range s.opts.Loops {
		l, err := newLoop(s, ln, addrs, tick)
		if err != nil {
			for _, l := range loops {
				l.release()
			}
			return nil, err
		}
		loops = append(loops, l)
	}
	ln.users.Store(int32(len(loops)))
	return loops, nil
}

func newLoop(s *Server, ln *Listener, addrs *resolver, tick time.Duration) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &loop{s: s, ln: ln, epfd: epfd, wakefd: wakefd, tick: tick,
		scratch: make([]byte, scratchSize), events: make([]unix.EpollEvent, maxEvents),
		addrs: addrs}
	if err = l.watch(wakefd, unix.EPOLLIN); err != nil {
		l.release()
		return nil, err
	}
	// EPOLLEXCLUSIVE: a new connection wakes one idle loop, not all
	// (Linux 4.5 and later; without it every loop wakes and all but one
	// find nothing to accept).
	err = l.watch(ln.fd, unix.EPOLLIN|unix.EPOLLET|unix.EPOLLEXCLUSIVE)
	if errors.Is(err, unix.EINVAL) {
		err = l.watch(ln.fd, unix.EPOLLIN|unix.EPOLLET)
	}
	if err != nil {
		l.release()
		return nil, err
	}
	l.watched = true
	return l, nil
}

func (l *loop) watch(fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

func (l *loop) release() {
	for _, p := range l.pipes {
		unix.Close(p.r)
		unix.Close(p.w)
	}
	l.pipes = nil
	unix.Close(l.wakefd)
	unix.Close(l.epfd)
}

func (l *loop) wake() {
	unix.Write(l.wakefd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// run handles events until the server drains and this loop's connections
// have ended.
func (l *loop) run() error {
	l.now = time.Now().UnixNano()
	l.nextSweep = l.now + int64(l.tick)
	for {
		timeout := int(l.tick / time.Millisecond)
		if len(l.again) > 0 || l.acceptMore {
			timeout = 0
		}
		n, err := unix.EpollWait(l.epfd, l.events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.cutAll()
			l.flushCloses()
			l.stopWatching()
			return fmt.Errorf("epoll wait: %w", err)
		}
		l.now = time.Now().UnixNano()
		for _, ev := range l.events[:max(n, 0)] {
			switch fd := int(ev.Fd); {
			case fd == l.wakefd:
				var b [8]byte
				unix.Read(l.wakefd, b[:])
			case fd == l.ln.fd && l.watched:
				l.acceptMore = true
			case fd < len(l.byFD) && l.byFD[fd] != nil:
				l.handle(l.byFD[fd], fd, ev.Events)
			}
		}
		if l.acceptMore && l.watched {
			l.accept()
		}
		// Connections that used up their turn go again, after everyone
		// the events named.
		l.again, l.later = l.later[:0], l.again
		for _, c := range l.later {
			c.queued = false
			if !c.closed {
				l.pumpBoth(c)
			}
		}
		if l.now >= l.nextSweep {
			l.sweep()
			l.nextSweep = l.now + int64(l.tick)
		}
		if l.s.closing.Load() {
			l.stopWatching()
			if l.s.cutting.Load() {
				l.s.cut.Add(int64(len(l.conns)))
				l.cutAll()
			}
		}
		l.flushCloses()
		if !l.watched && len(l.conns) == 0 {
			return nil
		}
	}
}

// stopWatching takes the listener out of this loop; the last loop to do so
// closes it, so that new connections are refused rather than queued.
func (l *loop) stopWatching() {
	if !l.watched {
		return
	}
	l.watched = false
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, l.ln.fd, nil)
	if l.ln.users.Add(-1) == 0 {
		l.ln.Close()
	}
}

// accept takes up to turnAccepts new connections; with more waiting it
// leaves acceptMore set, as an edge-triggered listener raises no new event
// for them.
func (l *loop) accept() {
	for range turnAccepts {
		fd, sa, err := accept4(l.ln.fd)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN):
				l.acceptPaused, l.acceptMore = false, false
				return
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
				continue
			}
			// Out of descriptors or memory: the connection waits in the
			// backlog, and no new edge will come for it, so try again at
			// the next tick instead of spinning.
			if !l.acceptPaused {
				l.s.opts.Log.Warn("accept failed; trying again shortly", "err", err)
			}
			l.acceptPaused, l.acceptMore = true, false
			return
		}
		if max := l.s.opts.MaxConns; max > 0 && l.s.active.Load() >= max {
			l.s.Rejected.Add(1)
			unix.Close(fd)
			continue
		}
		src := sourceOf(sa)
		if !l.s.sources.admit(src) {
			l.s.RejectedSource.Add(1)
			unix.Close(fd)
			continue
		}
		l.s.Accepted.Add(1)
		l.s.active.Add(1)
		c := &conn{client: side{fd: fd, writable: true}, backend: side{fd: -1}, clientAddr: sa, source: src, last: l.now}
		if err := l.watch(fd, connectEvents); err != nil {
			l.s.opts.Log.Warn("cannot watch a client connection", "err", err)
			l.s.active.Add(-1)
			l.s.sources.release(src)
			unix.Close(fd)
			continue
		}
		l.track(fd, c)
		c.index = len(l.conns)
		l.conns = append(l.conns, c)
		l.connect(c)
	}
}

func (l *loop) track(fd int, c *conn) {
	for fd >= len(l.byFD) {
		l.byFD = append(l.byFD, make([]*conn, max(len(l.byFD), 64))...)
	}
	l.byFD[fd] = c
}

// connect starts a connection to the next backend the pool picks; the
// backend's first writable event completes it.
func (l *loop) connect(c *conn) {
	for len(c.tried) <= l.s.opts.DialRetries {
		b, err := l.s.pool.Pick(c.tried)
		if err != nil {
			l.s.opts.Log.Warn("no backend for connection", "client", fromSockaddr(c.clientAddr).String(), "err", err)
			break
		}
		c.tried = append(c.tried, b)
		fd, err := l.startConnect(b.Addr)
		if errors.Is(err, errResolving) {
			continue // not the backend's fault
		}
		if err != nil {
			l.connectFailed(b, err)
			continue
		}
		c.be, c.backend, c.connecting, c.started = b, side{fd: fd}, true, l.now
		l.track(fd, c)
		return
	}
	l.s.NoRoute.Add(1)
	l.closeConn(c)
}

func (l *loop) startConnect(addr string) (int, error) {
	sa, err := l.addrs.get(addr, time.Unix(0, l.now))
	if err != nil {
		return -1, err
	}
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return -1, err
	}
	if err := l.watch(fd, connectEvents); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// connectFailed marks a backend that refused (passive health).
func (l *loop) connectFailed(b *balance.Backend, err error) {
	if l.s.pool.ReportFailure(b) {
		l.s.opts.Log.Warn("backend down (connect failed)", "backend", b.Addr, "err", err)
	}
}

// retry gives up on the connection's current backend and tries another.
func (l *loop) retry(c *conn, err error) {
	l.connectFailed(c.be, err)
	l.forget(c.backend.fd)
	c.be, c.backend, c.connecting = nil, side{fd: -1}, false
	l.connect(c)
}

func (l *loop) connected(c *conn) error {
	c.connecting = false
	c.be.Active.Add(1)
	c.be.Total.Add(1)
	c.last = l.now
	if !l.s.opts.SendProxy {
		return nil
	}
	local, err := unix.Getsockname(c.client.fd)
	if err != nil {
		return err
	}
	hdr, err := proxyproto.HeaderProxyFromAddrs(2, fromSockaddr(c.clientAddr), fromSockaddr(local)).Format()
	if err != nil {
		return err
	}
	// A fresh connection's send buffer is empty: the header goes at once,
	// ahead of the client's bytes and outside the byte counters.
	n, err := unix.Write(c.backend.fd, hdr)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		return err
	}
	if rest := hdr[max(n, 0):]; len(rest) > 0 {
		c.backend.pending = append(l.buffer(&c.backend), rest...)
	}
	return nil
}

func (l *loop) handle(c *conn, fd int, events uint32) {
	s := &c.client
	if fd == c.backend.fd {
		s = &c.backend
	}
	if events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		s.readable = true
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		s.rdhup = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		s.writable = true
	}
	if c.connecting {
		// The client's bytes wait in its socket until the backend answers.
		if s != &c.backend {
			return
		}
		if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			err := error(unix.ECONNREFUSED)
			if errno, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && errno != 0 {
				err = unix.Errno(errno)
			}
			l.retry(c, err)
			return
		}
		if events&unix.EPOLLOUT == 0 {
			return
		}
		if err := l.connected(c); err != nil {
			l.closeConn(c)
			return
		}
	}
	l.pumpBoth(c)
}

func (l *loop) pumpBoth(c *conn) {
	moreIn, errIn := l.pump(c, &c.client, &c.backend, &c.be.BytesIn)
	moreOut, errOut := l.pump(c, &c.backend, &c.client, &c.be.BytesOut)
	switch {
	case errIn != nil || errOut != nil || c.finished():
		l.closeConn(c)
	case (moreIn || moreOut) && !c.queued:
		c.queued = true
		l.again = append(l.again, c)
	}
}

// pump moves what src has to say to dst until a socket would block or the
// turn is used up (more: src may still have bytes), then passes src's end
// of stream on as a half-close. Short messages go straight from the loop's
// scratch buffer to dst, and only what dst cannot take at once is kept;
// once a read fills the scratch buffer the direction carries bulk data and
// moves it with splice(2) through a pipe instead.
func (l *loop) pump(c *conn, src, dst *side, counter *atomic.Uint64) (more bool, err error) {
	for reads := 0; ; reads++ {
		if ok, err := l.flush(c, dst, counter); !ok || err != nil {
			return false, err
		}
		if src.eof {
			// When the other direction has ended too, both sockets are
			// about to be closed, which sends the FIN: no shutdown needed.
			if !dst.shut && !(dst.eof && src.drained()) {
				dst.shut = true
				if err := unix.Shutdown(dst.fd, unix.SHUT_WR); err != nil {
					return false, err
				}
			}
			return false, nil
		}
		if !src.readable {
			return false, nil
		}
		if reads == turnReads {
			return true, nil
		}
		if dst.pipe != nil {
			// The pipe is empty here (flush emptied it), so EAGAIN means
			// the socket is. A short count proves nothing (the pipe may
			// fill up with fewer bytes than asked): read again.
			n, err := unix.Splice(src.fd, nil, dst.pipe.w, nil, scratchSize, spliceFlags)
			switch {
			case errors.Is(err, unix.EAGAIN):
				src.readable = false
				return false, nil
			case errors.Is(err, unix.EINTR):
			case err != nil:
				return false, err
			case n == 0:
				src.eof = true
			default:
				dst.piped += int(n)
				c.last = l.now
			}
			continue
		}
		n, err := unix.Read(src.fd, l.scratch)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				src.readable = false
				return false, nil
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return false, err
		}
		if n == 0 {
			src.eof = true
			continue
		}
		if n < len(l.scratch) {
			// A short read emptied the socket: new bytes raise a new edge.
			// If the end of stream was already announced, it is all that
			// is left, and reading it would only answer 0.
			if src.rdhup {
				src.eof = true
			} else {
				src.readable = false
			}
		} else {
			l.startSplice(dst)
		}
		c.last = l.now
		data := l.scratch[:n]
		if dst.writable {
			w, err := unix.Write(dst.fd, data)
			switch {
			case err == nil:
				counter.Add(uint64(w))
				data = data[w:]
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			default:
				return false, err
			}
		}
		if len(data) > 0 {
			dst.writable = false
			dst.pending = append(l.buffer(dst), data...)
		}
	}
}

// flush writes to dst what it could not take before: first the copied
// bytes, then the pipe's, in the order they came. ok means nothing is left.
func (l *loop) flush(c *conn, dst *side, counter *atomic.Uint64) (ok bool, err error) {
	for !dst.drained() {
		if !dst.writable {
			return false, nil
		}
		var n int
		if len(dst.pending) > 0 {
			n, err = unix.Write(dst.fd, dst.pending)
		} else {
			var n64 int64
			n64, err = unix.Splice(dst.pipe.r, nil, dst.fd, nil, dst.piped, spliceFlags)
			n = int(n64)
		}
		switch {
		case errors.Is(err, unix.EAGAIN):
			dst.writable = false
			return false, nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false, err
		}
		counter.Add(uint64(n))
		c.last = l.now
		if len(dst.pending) > 0 {
			dst.pending = dst.pending[n:]
			if len(dst.pending) > 0 {
				// A short write to a socket means its buffer is full;
				// its writable edge comes when there is room again.
				dst.writable = false
				return false, nil
			}
		} else {
			dst.piped -= n
		}
	}
	return true, nil
}

// startSplice gives dst a pipe, from the spares or new; without one (out of
// descriptors) the bytes keep going through the scratch buffer.
func (l *loop) startSplice(dst *side) {
	if dst.pipe != nil {
		return
	}
	if n := len(l.pipes); n > 0 {
		dst.pipe, l.pipes = l.pipes[n-1], l.pipes[:n-1]
		return
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return
	}
	dst.pipe = &pipe{r: fds[0], w: fds[1]}
}

// buffer is dst's storage for bytes it could not take yet, empty.
func (l *loop) buffer(s *side) []byte {
	if s.buf == nil {
		if n := len(l.spare); n > 0 {
			s.buf, l.spare = l.spare[n-1], l.spare[:n-1]
		} else {
			s.buf = make([]byte, 0, scratchSize)
		}
	}
	return s.buf[:0]
}

// sweep closes idle connections, gives up on slow connects and retries a
// paused accept.
func (l *loop) sweep() {
	idle, dial := int64(l.s.opts.IdleTimeout), int64(l.s.opts.DialTimeout)
	for i := len(l.conns) - 1; i >= 0; i-- {
		if i >= len(l.conns) {
			continue
		}
		c := l.conns[i]
		switch {
		case c.connecting && l.now-c.started >= dial:
			l.retry(c, unix.ETIMEDOUT)
		case !c.connecting && idle > 0 && l.now-c.last >= idle:
			l.closeConn(c)
		}
	}
	if l.acceptPaused && l.watched {
		l.accept()
	}
}

func (l *loop) cutAll() {
	for len(l.conns) > 0 {
		l.closeConn(l.conns[len(l.conns)-1])
	}
}

func (l *loop) closeConn(c *conn) {
	if c.closed {
		return
	}
	c.closed = true
	if c.be != nil && !c.connecting {
		c.be.Active.Add(-1)
	}
	l.forget(c.client.fd)
	l.forget(c.backend.fd)
	for _, s := range []*side{&c.client, &c.backend} {
		if s.buf != nil && len(l.spare) < spareBuffers {
			l.spare = append(l.spare, s.buf)
		}
		s.buf, s.pending = nil, nil
		if p := s.pipe; p != nil {
			if s.piped == 0 && len(l.pipes) < sparePipes {
				l.pipes = append(l.pipes, p)
			} else {
				l.toClose = append(l.toClose, p.r, p.w)
			}
			s.pipe = nil
		}
	}
	last := l.conns[len(l.conns)-1]
	l.conns[c.index] = last
	last.index = c.index
	l.conns = l.conns[:len(l.conns)-1]
	l.s.active.Add(-1)
	l.s.sources.release(c.source)
}

// forget stops routing events to fd and closes it after the current batch.
func (l *loop) forget(fd int) {
	if fd < 0 {
		return
	}
	l.byFD[fd] = nil
	l.toClose = append(l.toClose, fd)
}

func (l *loop) flushCloses() {
	for _, fd := range l.toClose {
		unix.Close(fd)
	}
	l.toClose = l.toClose[:0]
}
