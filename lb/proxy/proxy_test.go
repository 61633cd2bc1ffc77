package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
