package api

import (
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// AdmittedTLS are a coordinator's server credentials: TLS as
// credentials.NewTLS(cfg) gives it, with at most slots handshakes
// computing at once; the rest wait, parked, for up to wait each, and are
// then refused (the connection closes, and the client tries again after
// its backoff).
//
// A reconnect storm (every client of a restarted cluster, or of a
// coordinator that went away) brings thousands of handshakes at once.
// Each is a goroutine with a fraction of a millisecond of work (key
// share, certificate signature), and Go's scheduler serves the runnable
// ones in turn: with 10,000 people coming back at once
// (BenchmarkManyOnline), Raft's replication, woken behind thousands of
// them, missed its 500 ms lease and the leader stepped down, which made
// the storm longer still. Waiting here, a handshake is not runnable; Raft
// and the calls of the people already back are served first.
//
// A slot is taken once the ClientHello has arrived (the work starts) and
// given back when the server next reads from the client (it waits for the
// client's Finished) or the handshake ends: it is never held while the
// network is waited on, so a client that stops halfway holds no one up.
func AdmittedTLS(cfg *tls.Config, slots int, wait time.Duration) credentials.TransportCredentials {
	a := &admittedTLS{slots: make(chan struct{}, max(slots, 1)), wait: wait, stats: &HandshakeStats{}}
	cfg = cfg.Clone()
	next := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if c, ok := hello.Conn.(*admittingConn); ok {
			if err := c.admit(a.wait, a.stats); err != nil {
				return nil, err
			}
		}
		if next != nil {
			return next(hello)
		}
		return nil, nil
	}
	a.TransportCredentials = credentials.NewTLS(cfg)
	return a
}

// ErrHandshakesBusy refuses a handshake that found no slot in time.
var ErrHandshakesBusy = errors.New("the coordinator is busy with other connections; try again shortly")

type admittedTLS struct {
	credentials.TransportCredentials
	slots chan struct{}
	wait  time.Duration
	stats *HandshakeStats
}

// HandshakeStats count what AdmittedTLS did, for the metrics.
type HandshakeStats struct {
	Admitted atomic.Uint64 // handshakes that got a slot
	Refused  atomic.Uint64 // handshakes that waited their whole wait
	Waiting  atomic.Int64  // handshakes waiting for a slot now
}

// Handshakes are the counts of credentials made by AdmittedTLS (nil for
// others).
func Handshakes(c credentials.TransportCredentials) *HandshakeStats {
	if a, ok := c.(*admittedTLS); ok {
		return a.stats
	}
	return nil
}

func (a *admittedTLS) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c := &admittingConn{Conn: raw, slots: a.slots}
	conn, info, err := a.TransportCredentials.ServerHandshake(c)
	c.release()
	return conn, info, err
}

func (a *admittedTLS) Clone() credentials.TransportCredentials {
	return &admittedTLS{TransportCredentials: a.TransportCredentials.Clone(), slots: a.slots, wait: a.wait, stats: a.stats}
}

// admittingConn is a connection whose handshake may hold a slot.
type admittingConn struct {
	net.Conn
	slots chan struct{}
	held  atomic.Bool
}

func (c *admittingConn) admit(wait time.Duration, stats *HandshakeStats) error {
	select {
	case c.slots <- struct{}{}: // a free slot: no timer, no wait counted
	default:
		if !waitForSlot(c.slots, wait, stats) {
			stats.Refused.Add(1)
			return ErrHandshakesBusy
		}
	}
	c.held.Store(true)
	stats.Admitted.Add(1)
	return nil
}

// waitForSlot takes a slot within wait, counted as waiting meanwhile.
func waitForSlot(slots chan struct{}, wait time.Duration, stats *HandshakeStats) bool {
	stats.Waiting.Add(1)
	defer stats.Waiting.Add(-1)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (c *admittingConn) release() {
	if c.held.CompareAndSwap(true, false) {
		<-c.slots
	}
}

// Read gives the slot back first: the server now waits for the client.
func (c *admittingConn) Read(b []byte) (int, error) {
	if c.held.Load() {
		c.release()
	}
	return c.Conn.Read(b)
}
