package proxy

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// errResolving says a backend's host name has no address yet: its first
// lookup is under way. The connection tries another backend; the backend
// is not marked down for it.
var errResolving = errors.New("looking up the backend's host name")

// resolver turns backends' host:port into socket addresses for the event
// loops without ever making one wait: an address literal is parsed on the
// spot; a host name is looked up in the background, and the last answer
// serves until a fresh one arrives (every resolveTTL). A loop that waited
// for DNS would hold up every connection it carries.
type resolver struct {
	lookup func(ctx context.Context, host string) ([]net.IP, error)
	ttl    time.Duration

	mu      sync.Mutex
	entries map[string]*resolvedAddr
}

type resolvedAddr struct {
	sa      unix.Sockaddr
	err     error
	at      time.Time // of the last answer; zero before the first
	pending bool
}

func newResolver(ttl time.Duration) *resolver {
	return &resolver{ttl: ttl, entries: map[string]*resolvedAddr{},
		lookup: func(ctx context.Context, host string) ([]net.IP, error) {
			return net.DefaultResolver.LookupIP(ctx, "ip", host)
		}}
}

// get returns addr's socket address as last known.
func (r *resolver) get(addr string, now time.Time) (unix.Sockaddr, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return nil, &net.AddrError{Err: "invalid port", Addr: addr}
	}
	if ip := net.ParseIP(host); ip != nil {
		return toSockaddr(&net.TCPAddr{IP: ip, Port: port}), nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[addr]
	if e == nil {
		e = &resolvedAddr{err: errResolving}
		r.entries[addr] = e
	}
	if !e.pending && (e.at.IsZero() || now.Sub(e.at) >= r.ttl) {
		e.pending = true
		go r.refresh(addr, host, port)
	}
	return e.sa, e.err
}

func (r *resolver) refresh(addr, host string, port int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	ips, err := r.lookup(ctx, host)
	cancel()
	var sa unix.Sockaddr
	if err == nil {
		err = &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		for _, ip := range ips { // IPv4 first, as Go's dialer does
			if ip.To4() != nil {
				sa, err = toSockaddr(&net.TCPAddr{IP: ip, Port: port}), nil
				break
			}
		}
		if sa == nil && len(ips) > 0 {
			sa, err = toSockaddr(&net.TCPAddr{IP: ips[0], Port: port}), nil
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[addr]
	e.pending, e.at = false, time.Now()
	// A failed lookup keeps a working answer rather than losing it.
	if err == nil || e.sa == nil {
		e.sa, e.err = sa, err
	}
}
