package bench

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/e2em/e2em/desktop/engine"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// echoRTTs measures a bare libp2p stream echo of size-byte messages on
// loopback TCP: the floor any message protocol on libp2p stands on.
func echoRTTs(b *testing.B, n, size int) []time.Duration {
	h1, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		b.Fatal(err)
	}
	defer h1.Close()
	h2, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		b.Fatal(err)
	}
	defer h2.Close()
	h2.SetStreamHandler("/echo/1", func(s network.Stream) { io.Copy(s, s); s.Close() })
	if err := h1.Connect(context.Background(), peer.AddrInfo{ID: h2.ID(), Addrs: h2.Addrs()}); err != nil {
		b.Fatal(err)
	}
	s, err := h1.NewStream(context.Background(), h2.ID(), "/echo/1")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
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
