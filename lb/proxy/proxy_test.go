package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
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
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
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
	for i := 0; i < 4; i++ {
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
		if b.Addr == deadAddr && b.Healthy() {
			t.Fatal("a refusing backend must be marked down")
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
	for i := 0; i < 2; i++ { // round robin: one of the two starts at the black hole
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
		if b.Addr == hole && b.Healthy() {
			t.Fatal("a backend that never answers a connect must be marked down")
		}
	}
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
