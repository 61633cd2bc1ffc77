package bench

import (
	"fmt"
	"sync"
	"testing"
	"time"

	ct "github.com/e2em/e2em/internal/clustertest"
)

// BenchmarkHolePunchRate counts, over 20 fresh pairs of clients behind
// NATs of each kind, how many end up connected directly within 10 s of
// their first message and how soon (p50, p90), and how many of the pairs
// had every message delivered, direct or relayed. It needs root (network
// namespaces) and is skipped without it.
func BenchmarkHolePunchRate(b *testing.B) {
	ct.RequireRoot(b)
	for i, kind := range []string{ct.PortKeeping, ct.OneRandomPort, ct.RandomPort, ct.SharedNAT, ct.RSTAnswering} {
		b.Run(kind, func(b *testing.B) {
			lab := ct.NewNATLab(b, fmt.Sprintf("e2h%d", i), kind)
			c := ct.Start(b, ct.Options{N: 3, Netns: lab.Internet, Host: lab.Host, CoordArgs: []string{"-log-level", "warn"}})
			const runs, parallel = 20, 4
			var mu sync.Mutex
			direct, delivered, times := 0, 0, []time.Duration{}
			sem := make(chan struct{}, parallel)
			var wg sync.WaitGroup
			for r := 0; r < runs; r++ {
				wg.Add(1)
				sem <- struct{}{}
				go func(r int) {
					defer wg.Done()
					defer func() { <-sem }()
					ok, took := punchOnce(b, c, lab, r)
					mu.Lock()
					delivered++ // punchOnce fails the benchmark on a message not delivered
					if ok {
						direct++
						times = append(times, took)
					}
					mu.Unlock()
				}(r)
			}
			wg.Wait()
			b.ReportMetric(float64(direct), "direct-of-20")
			b.ReportMetric(float64(delivered), "delivered-of-20")
			if len(times) > 0 {
				b.ReportMetric(float64(percentile(times, 0.5))/1e6, "p50-ms-to-direct")
				b.ReportMetric(float64(percentile(times, 0.9))/1e6, "p90-ms-to-direct")
			}
		})
	}
}

// punchOnce signs up a new pair, sends a message, and keeps sending for
// 10 s until one leaves directly.
func punchOnce(b *testing.B, c *ct.Cluster, lab *ct.NATLab, r int) (bool, time.Duration) {
	var cl [2]*ct.Client
	for i := range cl {
		name := fmt.Sprintf("p%dx%dz", r, i)
		cl[i] = c.StartClient(b, name, ct.ClientOptions{Wrap: ct.Wrap(lab.Clients[i]), Args: []string{"-port", fmt.Sprint(4100 + 2*r + i)}})
		cl[i].Do(fmt.Sprintf("Sign up %s 9 password123", name))
		cl[i].Do(fmt.Sprintf("Login %s9 password123", name))
	}
	defer cl[0].Kill()
	defer cl[1].Kill()
	start := time.Now()
	var ways []string
	for i := 0; time.Since(start) < 10*time.Second; i++ {
		sent := cl[0].Deliver(cl[1], fmt.Sprintf("p%dx1z9", r), fmt.Sprintf("hi %d", i))
		if sent.S("via") == "direct" {
			return true, time.Since(start)
		}
		ways = append(ways, sent.S("via"))
		time.Sleep(100 * time.Millisecond) // a quick typist; the punch runs meanwhile
	}
	b.Logf("run %d stayed indirect: %v", r, ways)
	if len(ways) == 1 {
		b.Logf("sender log:\n%s\nrecipient log:\n%s", ct.Tail(cl[0].Log(), 20), ct.Tail(cl[1].Log(), 20))
	}
	return false, 0
}
