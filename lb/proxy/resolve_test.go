//go:build linux

package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestResolverNeverMakesALoopWait(t *testing.T) {
	r := newResolver(30 * time.Second)
	answers := make(chan []net.IP)
	failures := make(chan error)
	asked := make(chan string, 4)
	r.lookup = func(_ context.Context, host string) ([]net.IP, error) {
		asked <- host
		select {
		case ips := <-answers:
			return ips, nil
		case err := <-failures:
			return nil, err
		}
	}
	now := time.Now()
	if sa, err := r.get("10.0.0.7:7101", now); err != nil || sa.(*unix.SockaddrInet4).Port != 7101 {
		t.Fatalf("an address literal: %v %v", sa, err)
	}
	// First use of a name: no address yet, and the lookup runs aside.
	if _, err := r.get("coord1.example:7101", now); !errors.Is(err, errResolving) {
		t.Fatalf("first use: %v, want errResolving", err)
	}
	<-asked
	r.get("coord1.example:7101", now) // one lookup at a time
	answers <- []net.IP{net.ParseIP("2001:db8::1"), net.ParseIP("10.0.0.1")}
	waitFor(t, func() bool {
		sa, err := r.get("coord1.example:7101", now)
		v4, ok := sa.(*unix.SockaddrInet4)
		return err == nil && ok && v4.Addr == [4]byte{10, 0, 0, 1} && v4.Port == 7101
	})
	if len(asked) != 0 {
		t.Fatal("a second lookup started while the first ran")
	}
	// After the TTL the old answer serves while a new lookup runs; a failed
	// lookup keeps it.
	later := now.Add(31 * time.Second)
	if sa, err := r.get("coord1.example:7101", later); err != nil || sa == nil {
		t.Fatalf("stale answer not served: %v", err)
	}
	select {
	case host := <-asked:
		if host != "coord1.example" {
			t.Fatalf("looked up %q", host)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no fresh lookup after the TTL")
	}
	failures <- errors.New("DNS server down")
	waitFor(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.entries["coord1.example:7101"].pending
	})
	if sa, err := r.get("coord1.example:7101", later); err != nil || sa.(*unix.SockaddrInet4).Addr != [4]byte{10, 0, 0, 1} {
		t.Fatalf("a failed lookup lost the working answer: %v %v", sa, err)
	}
	if _, err := r.get("no-port", now); err == nil {
		t.Fatal("an address without a port was accepted")
	}
}

// A backend named by host name is served (the first connections may go
// to another backend while the name is looked up) and never marked down
// for the lookup.
func TestBackendByHostName(t *testing.T) {
	backend := echoServer(t, false, nil)
	_, port, _ := net.SplitHostPort(backend)
	_, addr, pool := startProxy(t, Options{}, net.JoinHostPort("localhost", port))
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = io.ReadFull(c, make([]byte, 1))
		return err == nil
	})
	if !pool.Backends()[0].Healthy() {
		t.Fatal("the backend was marked down while its name was looked up")
	}
}
