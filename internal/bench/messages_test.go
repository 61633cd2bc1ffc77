package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/e2em/e2em/desktop/engine"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// loopbackHost is a bare libp2p host on loopback TCP, closed when the
// benchmark ends.
func loopbackHost(b *testing.B) host.Host {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	return h
}

// echoStream opens a stream from src to a new host that echoes it back.
func echoStream(b *testing.B, src host.Host) network.Stream {
	h := loopbackHost(b)
	h.SetStreamHandler("/echo/1", func(s network.Stream) { io.Copy(s, s); s.Close() })
	if err := src.Connect(context.Background(), peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}); err != nil {
		b.Fatal(err)
	}
	s, err := src.NewStream(context.Background(), h.ID(), "/echo/1")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// echoRTTs measures a bare libp2p stream echo of size-byte messages on
// loopback TCP: the floor any message protocol on libp2p stands on.
func echoRTTs(b *testing.B, n, size int) []time.Duration {
	s := echoStream(b, loopbackHost(b))
	buf := make([]byte, size)
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		s.Write(buf)
		if _, err := io.ReadFull(s, buf); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(start))
	}
	return out
}

// person is an in-process engine (the same code the clients run) signed up
// and logged in to the cluster.
type person struct {
	eng   *engine.Engine
	login string
}

func newPerson(b *testing.B, c *ct.Cluster, name string, relayOnly bool) *person {
	eng, err := engine.New(engine.Config{
		Profile: filepath.Join(b.TempDir(), name), LB: c.Layout.LB, CAFile: c.CAFile(),
		Listen: "127.0.0.1", RelayOnly: relayOnly,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { eng.Close() })
	ctx := context.Background()
	login, err := eng.SignUp(ctx, name, "1", "password123")
	if err != nil {
		b.Fatal(err)
	}
	if err := eng.Login(ctx, login, "password123"); err != nil {
		b.Fatal(err)
	}
	return &person{eng: eng, login: login}
}

// waitFor reads events until one matches, failing after a minute.
func waitFor(b *testing.B, p *person, match func(engine.Event) bool) engine.Event {
	timeout := time.After(time.Minute)
	for {
		select {
		case ev := <-p.eng.Events():
			if match(ev) {
				return ev
			}
		case <-timeout:
			b.Fatalf("%s: no expected event within a minute", p.login)
		}
	}
}

// exchange measures n sequential 100-byte messages from a to b: one way
// (a's Send until b's engine has stored it and reports it) and round trip
// (until a hears b's acknowledgement), and how each went.
func exchange(b *testing.B, a, to *person, n int) (oneWay, roundTrip []time.Duration, via string) {
	ctx := context.Background()
	body := strings.Repeat("x", 100)
	for i := 0; i < n; i++ {
		start := time.Now()
		id, err := a.eng.Send(ctx, to.login, body)
		if err != nil {
			b.Fatal(err)
		}
		waitFor(b, to, func(ev engine.Event) bool { return ev.Kind == engine.EventMessage && ev.ID == id })
		oneWay = append(oneWay, time.Since(start))
		for {
			ev := waitFor(b, a, func(ev engine.Event) bool {
				return (ev.Kind == engine.EventDelivered || ev.Kind == engine.EventSent) && ev.ID == id
			})
			if ev.Kind == engine.EventSent {
				via = ev.Via
				continue
			}
			break
		}
		roundTrip = append(roundTrip, time.Since(start))
	}
	return oneWay, roundTrip, via
}

// BenchmarkMessages measures message latency direct and relayed beside a
// bare libp2p stream echo of the same size, and one-way throughput.
func BenchmarkMessages(b *testing.B) {
	c := ct.Start(b, ct.Options{N: 3, CoordArgs: []string{"-log-level", "warn"}})
	alice := newPerson(b, c, "alice", false)
	bob := newPerson(b, c, "bob", false)
	carol := newPerson(b, c, "carol", true) // reachable only through relays
	const n = 2000
	for i := 0; i < b.N; i++ {
		echo := echoRTTs(b, n, 100)
		exchange(b, alice, bob, 20) // warm up: pin keys, open the session
		direct1, directRT, via := exchange(b, alice, bob, n)
		if via != engine.ViaDirect {
			b.Fatalf("alice→bob went %s", via)
		}
		exchange(b, alice, carol, 20)
		relay1, relayRT, via := exchange(b, alice, carol, n/4)
		if via != engine.ViaRelay {
			b.Fatalf("alice→carol went %s", via)
		}
		us := func(d time.Duration) float64 { return float64(d) / 1e3 }
		b.ReportMetric(us(percentile(echo, 0.5)), "echo-p50-µs")
		b.ReportMetric(us(percentile(echo, 0.99)), "echo-p99-µs")
		b.ReportMetric(us(percentile(direct1, 0.5)), "direct-oneway-p50-µs")
		b.ReportMetric(us(percentile(direct1, 0.99)), "direct-oneway-p99-µs")
		b.ReportMetric(us(percentile(directRT, 0.5)), "direct-acked-p50-µs")
		b.ReportMetric(us(percentile(directRT, 0.99)), "direct-acked-p99-µs")
		b.ReportMetric(us(percentile(relay1, 0.5)), "relay-oneway-p50-µs")
		b.ReportMetric(us(percentile(relay1, 0.99)), "relay-oneway-p99-µs")
		b.ReportMetric(us(percentile(relayRT, 0.5)), "relay-acked-p50-µs")
		b.ReportMetric(float64(percentile(direct1, 0.5))/float64(percentile(echo, 0.5)), "direct/echo-p50")

		// Throughput: queue many messages at once, time until all arrived.
		const burst = 2000
		ctx := context.Background()
		arrived := make(chan time.Time)
		go func() {
			seen := 0
			for seen < burst {
				ev := <-bob.eng.Events()
				if ev.Kind == engine.EventMessage && ev.Body == "burst" {
					seen++
				}
			}
			arrived <- time.Now()
		}()
		drain := make(chan struct{})
		go func() { // the sender's own events are not the point here
			for {
				select {
				case <-alice.eng.Events():
				case <-drain:
					return
				}
			}
		}()
		start := time.Now()
		for j := 0; j < burst; j++ {
			if _, err := alice.eng.Send(ctx, bob.login, "burst"); err != nil {
				b.Fatal(err)
			}
		}
		var end time.Time
		select {
		case end = <-arrived:
		case <-time.After(2 * time.Minute):
			b.Fatal("the burst did not arrive in 2 minutes")
		}
		close(drain)
		b.ReportMetric(float64(burst)/end.Sub(start).Seconds(), "msgs/s")
	}
}

// bareFanOut is the floor for a group message on libp2p: one host writes
// size bytes on an open stream to each of n hosts, which echo them, and the
// time until every echo is back (a round trip to n peers at once).
func bareFanOut(b *testing.B, n, size, rounds int) []time.Duration {
	src := loopbackHost(b)
	var streams []network.Stream
	for i := 0; i < n; i++ {
		streams = append(streams, echoStream(b, src))
	}
	out := make([]time.Duration, 0, rounds)
	done := make(chan error, n)
	for r := 0; r < rounds; r++ {
		start := time.Now()
		for _, s := range streams {
			go func() {
				buf := make([]byte, size)
				if _, err := s.Write(buf); err != nil {
					done <- err
					return
				}
				_, err := io.ReadFull(s, buf)
				done <- err
			}()
		}
		for range streams {
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		out = append(out, time.Since(start))
	}
	return out
}

// BenchmarkGroupFanOut measures a group message to N members: from
// SendGroup until every member's engine has stored it and reports it,
// beside bareFanOut to as many peers in the same run; and how long
// SendGroup itself takes (asking the cluster for the members, storing one
// queue entry per member, handing each its sealed copy).
func BenchmarkGroupFanOut(b *testing.B) {
	const members, rounds = 24, 50
	c := ct.Start(b, ct.Options{N: 3, CoordArgs: []string{"-log-level", "warn"}})
	ctx := context.Background()
	sender := newPerson(b, c, "sender", false)
	if _, err := sender.eng.CreateGroup(ctx, "fanout"); err != nil {
		b.Fatal(err)
	}
	var group []*person
	for i := 0; i < members; i++ {
		p := newPerson(b, c, fmt.Sprintf("member%dx", i), false)
		if _, err := p.eng.JoinGroup(ctx, "fanout"); err != nil {
			b.Fatal(err)
		}
		group = append(group, p)
	}
	go func() { // the sender's own events are not the point here
		for range sender.eng.Events() {
		}
	}()
	var queued []time.Duration
	// send one group message and wait until each member reports it.
	send := func(text string) time.Duration {
		start := time.Now()
		n, err := sender.eng.SendGroup(ctx, []string{"fanout"}, text)
		if err != nil || n != members {
			b.Fatalf("send to the group: %d members, %v", n, err)
		}
		queued = append(queued, time.Since(start))
		for _, p := range group {
			waitFor(b, p, func(ev engine.Event) bool { return ev.Kind == engine.EventMessage && ev.Body == text })
		}
		return time.Since(start)
	}
	for i := 0; i < b.N; i++ {
		send("warm up") // sessions with every member
		var fan []time.Duration
		for r := 0; r < rounds; r++ {
			fan = append(fan, send(fmt.Sprintf("round %d %s", r, strings.Repeat("x", 90))))
		}
		ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
		bare := bareFanOut(b, members, 100, rounds)
		b.ReportMetric(ms(percentile(fan, 0.5)), "fanout-p50-ms")
		b.ReportMetric(ms(percentile(fan, 0.99)), "fanout-p99-ms")
		b.ReportMetric(ms(percentile(bare, 0.5)), "bare-fanout-p50-ms")
		b.ReportMetric(float64(percentile(fan, 0.5))/float64(percentile(bare, 0.5)), "fanout/bare-p50")
		b.ReportMetric(members, "members")
		b.ReportMetric(ms(percentile(queued, 0.5)), "sendgroup-returns-p50-ms")
	}
}
