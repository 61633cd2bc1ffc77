//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/e2em/e2em/lb/balance"
)

// echoServer answers every byte it reads; with proxyHeader it first reads a
// PROXY header and reports the source address it names.
func echoServer(t *testing.T, proxyHeader bool, sources chan<- string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var r io.Reader = c
				if proxyHeader {
					br := bufio.NewReader(c)
					h, err := proxyproto.Read(br)
					if err != nil {
						return
					}
					sources <- h.SourceAddr.String()
					r = br
				}
				io.Copy(c, r)
			}()
		}
	}()
	return ln.Addr().String()
}

func startProxy(t *testing.T, opts Options, backends ...string) (*Server, string, *balance.Pool) {
	t.Helper()
	pool := balance.NewPool(balance.Options{StartHealthy: true})
	for _, b := range backends {
		pool.Add(b)
	}
	srv := New(pool, opts)
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Drain(ctx)
	})
	return srv, ln.Addr().String(), pool
}

func TestBytesPassBothWaysWithProxyHeader(t *testing.T) {
	sources := make(chan string, 1)
	backend := echoServer(t, true, sources)
	_, addr, pool := startProxy(t, Options{SendProxy: true}, backend)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := make([]byte, 3<<20)
	rand.Read(payload)
	go c.Write(payload)
	got := make([]byte, len(payload))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("bytes changed on the way")
	}
	if src := <-sources; src != c.LocalAddr().String() {
		t.Fatalf("backend saw %s, client is %s", src, c.LocalAddr())
	}
	b := pool.Backends()[0]
	waitFor(t, func() bool {
		return b.BytesIn.Load() == uint64(len(payload)) && b.BytesOut.Load() == uint64(len(payload))
	})
}

func TestHalfCloseIsPassedOn(t *testing.T) {
	backend := echoServer(t, false, nil)
	_, addr, _ := startProxy(t, Options{}, backend)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	backend := echoServer(t, false, nil)
	_, addr, _ := startProxy(t, Options{IdleTimeout: 200 * time.Millisecond}, backend)
	// The balancer may accept before Dial returns here: start the clock first.
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("want EOF from an idle close, got %v", err)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Fatal("closed before the idle timeout")
	}
}

func TestActiveConnectionOutlivesIdleTimeout(t *testing.T) {
	backend := echoServer(t, false, nil)
	_, addr, _ := startProxy(t, Options{IdleTimeout: 300 * time.Millisecond}, backend)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("a busy connection was cut: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the client's pace, not a wait for the proxy
	}
}

func TestConnectionLimit(t *testing.T) {
	backend := echoServer(t, false, nil)
	srv, addr, _ := startProxy(t, Options{MaxConns: 1}, backend)
	first, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitFor(t, func() bool { return srv.Active() == 1 })
	second, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection over the limit was served")
	}
	if srv.Rejected.Load() != 1 {
		t.Fatalf("rejected %d", srv.Rejected.Load())
	}
}

func TestFailedDialMarksBackendAndTriesAnother(t *testing.T) {
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	live := echoServer(t, false, nil)
	_, addr, pool := startProxy(t, Options{DialRetries: 2}, deadAddr, live)
	servedWhileOneIsMarkedDown(t, addr, 4, pool, deadAddr)
}

// servedWhileOneIsMarkedDown makes n connections through addr, each of
// which must be answered, and then expects the failing backend to be down.
func servedWhileOneIsMarkedDown(t *testing.T, addr string, n int, pool *balance.Pool, failing string) {
	t.Helper()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatalf("connection %d not served: %v", i, err)
		}
		c.Close()
	}
	for _, b := range pool.Backends() {
		if b.Addr == failing && b.Healthy() {
			t.Fatalf("backend %s failed its connects but is still up", failing)
		}
	}
}

func TestDrainLetsOpenConnectionsFinish(t *testing.T) {
	backend := echoServer(t, false, nil)
	srv, addr, _ := startProxy(t, Options{}, backend)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return srv.Active() == 1 })
	drained := make(chan int)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		drained <- srv.Drain(ctx)
	}()
	// New connections are refused once draining starts.
	waitFor(t, func() bool {
		n, err := net.Dial("tcp", addr)
		if err == nil {
			n.Close()
		}
		return err != nil
	})
	c.Write([]byte("still here"))
	buf := make([]byte, 10)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("open connection broken during drain: %q %v", buf, err)
	}
	c.Close()
	if cut := <-drained; cut != 0 {
		t.Fatalf("drain cut %d connections", cut)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The loops never set TCP_NODELAY on a client socket: they rely on Linux
// copying it from the listener, which Listen sets. Without it a small
// reply would wait for Nagle's algorithm.
func TestAcceptedSocketsInheritNoDelay(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var fd int
	waitFor(t, func() bool {
		fd, _, err = accept4(ln.fd)
		return err == nil
	})
	defer unix.Close(fd)
	if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
		t.Fatalf("accepted socket has TCP_NODELAY=%d (%v)", v, err)
	}
}

func TestListenOnAllAddressesTakesIPv4AndIPv6(t *testing.T) {
	backend := echoServer(t, false, nil)
	pool := balance.NewPool(balance.Options{StartHealthy: true})
	pool.Add(backend)
	srv := New(pool, Options{})
	ln, err := Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Drain(context.Background())
	port := ln.Addr().(*net.TCPAddr).Port
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.Dial("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
		if err != nil {
			if host == "::1" {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			t.Fatal(err)
		}
		c.Write([]byte("hi"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
			t.Fatalf("via %s: %q %v", host, buf, err)
		}
		c.Close()
	}
}

// A backend that stops reading fills its socket: the loop must hold what it
// cannot write, stop reading the client, and resume on the backend's
// writable edge without losing or reordering a byte.
func TestSlowBackendGetsEveryByteInOrder(t *testing.T) {
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	got := make(chan []byte, 1)
	release := make(chan struct{})
	go func() {
		c, err := bl.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		<-release
		all, _ := io.ReadAll(c)
		got <- all
	}()
	srv, addr, _ := startProxy(t, Options{}, bl.Addr().String())
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := make([]byte, 64<<20)
	rand.Read(payload)
	wrote := make(chan error, 1)
	c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	go func() {
		_, err := c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
		wrote <- err
	}()
	// The write cannot finish while the backend reads nothing: 64 MiB is
	// more than the kernel buffers on both hops hold.
	select {
	case err := <-wrote:
		t.Fatalf("write finished with the backend not reading: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if srv.Active() != 1 {
		t.Fatalf("active %d", srv.Active())
	}
	close(release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	select {
	case all := <-got:
		if !bytes.Equal(all, payload) {
			t.Fatalf("backend got %d bytes, not the %d sent in order", len(all), len(payload))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend never saw the end of the stream")
	}
}

// blackHole is a backend address whose connects never complete: a
// listener with a full backlog that never accepts drops new SYNs.
func blackHole(t *testing.T) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := fromSockaddr(sa).String()
	// Fill the accept queue; the connects that do not fit stay pending.
	for i := 0; i < 4; i++ {
		d := net.Dialer{Timeout: 100 * time.Millisecond}
		if c, err := d.Dial("tcp", addr); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return addr
}

func TestSlowConnectGivesUpAndTriesAnother(t *testing.T) {
	hole := blackHole(t)
	live := echoServer(t, false, nil)
	_, addr, pool := startProxy(t, Options{DialTimeout: 200 * time.Millisecond, DialRetries: 1}, hole, live)
	// Round robin: one of the two connections starts at the black hole.
	servedWhileOneIsMarkedDown(t, addr, 2, pool, hole)
}

func TestDrainCutsWhatOutlivesIt(t *testing.T) {
	backend := echoServer(t, false, nil)
	srv, addr, _ := startProxy(t, Options{}, backend)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool { return srv.Active() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if cut := srv.Drain(ctx); cut != 1 {
		t.Fatalf("drain cut %d connections, want 1", cut)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("want the cut connection closed, got %v", err)
	}
	if srv.Active() != 0 {
		t.Fatalf("active %d after drain", srv.Active())
	}
}

// socketPair is two connected non-blocking stream sockets.
func socketPair(t *testing.T) (int, int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// tcpPair is two connected non-blocking loopback TCP sockets.
func tcpPair(t *testing.T) (int, int) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(a) })
	if err := unix.Connect(a, toSockaddr(ln.Addr().(*net.TCPAddr))); err != nil && err != unix.EINPROGRESS {
		t.Fatal(err)
	}
	var b int
	waitFor(t, func() bool {
		b, _, err = accept4(ln.fd)
		return err == nil
	})
	t.Cleanup(func() { unix.Close(b) })
	return a, b
}

// A receiver whose buffer is full when short messages arrive: pump keeps
// them, in order, and delivers them before anything newer once the
// receiver has room again.
func TestPumpKeepsWhatAFullReceiverCannotTake(t *testing.T) {
	srcFD, sender := socketPair(t)
	dstFD, receiver := socketPair(t)
	// Fill the receiver's socket.
	filler := bytes.Repeat([]byte{'f'}, 4096)
	filled := 0
	for {
		n, err := unix.Write(dstFD, filler)
		if err != nil {
			break
		}
		filled += n
	}
	l := &loop{s: &Server{}, scratch: make([]byte, scratchSize)}
	c := &conn{}
	src := &side{fd: srcFD, readable: true}
	dst := &side{fd: dstFD, writable: true}
	var counter atomic.Uint64

	unix.Write(sender, []byte("first "))
	if _, err := l.pump(c, src, dst, &counter); err != nil {
		t.Fatal(err)
	}
	if string(dst.pending) != "first " || dst.writable || src.readable {
		t.Fatalf("pending %q writable %v readable %v", dst.pending, dst.writable, src.readable)
	}
	// More arrives while the receiver is still full: it must not be read
	// (the kept bytes go first), so it stays in the sender's socket.
	unix.Write(sender, []byte("second"))
	src.readable = true
	l.pump(c, src, dst, &counter)
	if string(dst.pending) != "first " {
		t.Fatalf("pending %q", dst.pending)
	}
	// The receiver reads everything; its writable edge comes.
	got := make([]byte, 0, filled+64)
	buf := make([]byte, 65536)
	drain := func() {
		for {
			n, err := unix.Read(receiver, buf)
			if err != nil {
				return
			}
			got = append(got, buf[:n]...)
		}
	}
	drain()
	dst.writable = true
	if _, err := l.pump(c, src, dst, &counter); err != nil {
		t.Fatal(err)
	}
	drain()
	if len(got) != filled+12 || string(got[filled:]) != "first second" {
		t.Fatalf("receiver got %d bytes ending %q, want %d ending %q", len(got), got[max(0, len(got)-12):], filled+12, "first second")
	}
	if counter.Load() != 12 {
		t.Fatalf("counted %d bytes, want 12", counter.Load())
	}
}

// Bulk bytes move through a pipe; when the receiver fills up, the pipe
// holds them, and the end of stream is passed on only after the pipe is
// empty.
func TestPumpSplicesBulkAndEndsAfterThePipeEmpties(t *testing.T) {
	srcFD, sender := socketPair(t)
	// TCP (a Unix socket takes a whole splice whatever its buffer), with
	// a small send buffer, so that splices into it come up short.
	dstFD, receiver := tcpPair(t)
	if err := unix.SetsockoptInt(dstFD, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	short := 0
	l := &loop{s: &Server{}, scratch: make([]byte, 1024)} // a full read is bulk
	t.Cleanup(l.release)
	c := &conn{}
	src := &side{fd: srcFD, readable: true}
	dst := &side{fd: dstFD, writable: true}
	var counter atomic.Uint64
	payload := make([]byte, 256<<10)
	rand.Read(payload)
	var got []byte
	buf := make([]byte, 65536)
	sent := 0
	deadline := time.Now().Add(10 * time.Second)
	for round := 0; time.Now().Before(deadline) && (len(got) < len(payload) || !dst.shut); round++ {
		if sent < len(payload) {
			n, err := unix.Write(sender, payload[sent:min(len(payload), sent+8192)])
			if err == nil {
				sent += n
			}
			if sent == len(payload) {
				unix.Shutdown(sender, unix.SHUT_WR)
			}
		}
		src.readable, dst.writable = true, true
		if _, err := l.pump(c, src, dst, &counter); err != nil {
			t.Fatal(err)
		}
		if dst.piped > 0 {
			short++
		}
		if round%3 == 0 { // the receiver reads only now and then
			for {
				n, err := unix.Read(receiver, buf)
				if err != nil || n == 0 {
					break
				}
				got = append(got, buf[:n]...)
			}
		}
	}
	if dst.pipe == nil || short == 0 {
		t.Fatalf("bulk data did not switch to splice (%v) or the receiver never filled up (%d)", dst.pipe != nil, short)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("receiver got %d bytes, want the %d sent, in order (sent %d, src %+v, dst piped %d writable %v)", len(got), len(payload), sent, *src, dst.piped, dst.writable)
	}
	if !src.eof || !dst.shut || dst.piped != 0 {
		t.Fatalf("eof %v shut %v piped %d", src.eof, dst.shut, dst.piped)
	}
	if n, _ := unix.Read(receiver, buf); n != 0 {
		t.Fatalf("receiver read %d more bytes, want the end of stream", n)
	}
}

// Connections that queued before the loop looked are taken in turns of
// turnAccepts; the edge-triggered listener raises no new event for the
// rest, so the loop must come back for them by itself.
func TestEveryQueuedConnectionIsAccepted(t *testing.T) {
	backend := echoServer(t, false, nil)
	pool := balance.NewPool(balance.Options{StartHealthy: true})
	pool.Add(backend)
	srv := New(pool, Options{Loops: 1})
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const queued = 3*turnAccepts + 5
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Drain(ctx)
	}()
	for i := 0; i < queued; i++ { // the kernel completes them into the backlog
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	go srv.Serve(ln)
	waitFor(t, func() bool { return srv.Active() == queued })
}
