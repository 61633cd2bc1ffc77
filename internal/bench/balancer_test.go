// Package bench holds the load benchmarks of DESIGN.md §7. Each measures
// its subject beside a baseline in the same run and reports both and their
// ratio; `make bench` runs them, docs/benchmarks.md records the results.
package bench

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ct "github.com/e2em/e2em/internal/clustertest"
)

// echoBackend answers every byte; it is what both balancers front.
func echoBackend(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func freeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProcess runs a command until the benchmark ends.
func startProcess(b *testing.B, name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

func waitListening(b *testing.B, addr string) {
	ct.Eventually(b, 10*time.Second, func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		// A round trip proves a backend is attached, not only a listener.
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte{1}); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 1))
		return err
	})
}

// connRate opens, uses (one byte each way) and closes connections from
// `workers` goroutines for d, and returns connections per second.
func connRate(addr string, workers int, d time.Duration) float64 {
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for time.Now().Before(deadline) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					continue
				}
				c.Write(buf)
				if _, err := io.ReadFull(c, buf); err == nil {
					n.Add(1)
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / d.Seconds()
}

// throughput streams through `conns` long connections for d and returns
// bytes per second echoed back.
func throughput(addr string, conns int, d time.Duration) float64 {
	var total atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			continue
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for time.Now().Before(deadline) {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
			c.(*net.TCPConn).CloseWrite()
		}()
		go func() {
			defer wg.Done()
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			total.Add(n)
		}()
	}
	wg.Wait()
	return float64(total.Load()) / d.Seconds()
}

// latencies does n rounds of 64-byte round trips, one on a connection to
// each address per round, in a rotating order: a hiccup of the machine
// falls on all of them alike instead of on whichever ran at that moment.
func latencies(b *testing.B, addrs []string, n int) [][]time.Duration {
	conns := make([]net.Conn, len(addrs))
	out := make([][]time.Duration, len(addrs))
	for i, a := range addrs {
		c, err := net.Dial("tcp", a)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		out[i] = make([]time.Duration, 0, n)
	}
	buf := make([]byte, 64)
	for r := 0; r < n; r++ {
		for k := range conns {
			i := (r + k) % len(conns)
			start := time.Now()
			conns[i].Write(buf)
			if _, err := io.ReadFull(conns[i], buf); err != nil {
				b.Fatalf("round trip through %s: %v", addrs[i], err)
			}
			out[i] = append(out[i], time.Since(start))
		}
	}
	return out
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// BenchmarkBalancerVsHAProxy fronts the same three echo backends with lb and
// with Debian's HAProxy in TCP mode and puts the same load through each.
func BenchmarkBalancerVsHAProxy(b *testing.B) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		b.Skip("haproxy not installed (make deps installs it)")
	}
	bin := ct.Binaries(b)
	backends := []string{echoBackend(b), echoBackend(b), echoBackend(b)}
	lbAddr, haAddr := freeAddr(b), freeAddr(b)
	startProcess(b, filepath.Join(bin, "lb"), "-listen", lbAddr, "-metrics", "", "-backend", strings.Join(backends, ","),
		"-health", "tcp", "-send-proxy=false", "-rise", "1", "-max-conns", "0",
		"-max-conns-per-source", "0", "-new-conns-per-source", "0") // every benchmark client is 127.0.0.1
	cfg := filepath.Join(b.TempDir(), "haproxy.cfg")
	var servers strings.Builder
	for i, be := range backends {
		fmt.Fprintf(&servers, "    server s%d %s check inter 1s fall 1 rise 1\n", i, be)
	}
	os.WriteFile(cfg, []byte(fmt.Sprintf(`global
    maxconn 9000
defaults
    mode tcp
    timeout connect 2s
    timeout client 5m
    timeout server 5m
frontend bench
    bind %s
    default_backend echo
backend echo
    balance roundrobin
%s`, haAddr, servers.String())), 0o644)
	startProcess(b, haproxy, "-f", cfg, "-db")
	waitListening(b, lbAddr)
	waitListening(b, haAddr)

	const d = 5 * time.Second
	for i := 0; i < b.N; i++ {
		// 20,000 round trips each, interleaved one by one.
		lat := latencies(b, []string{backends[0], lbAddr, haAddr}, 20000)
		direct, lbLat, haLat := lat[0], lat[1], lat[2]
		// Alternate the two so drift in the machine hits both alike.
		const rounds = 6
		var lbConn, haConn, lbBytes, haBytes float64
		for round := 0; round < rounds; round++ {
			lbConn += connRate(lbAddr, 16, d/rounds) / rounds
			haConn += connRate(haAddr, 16, d/rounds) / rounds
		}
		for round := 0; round < rounds; round++ {
			lbBytes += throughput(lbAddr, 8, d/rounds) / rounds
			haBytes += throughput(haAddr, 8, d/rounds) / rounds
		}
		p99 := func(ds []time.Duration) float64 { return float64(percentile(ds, 0.99)) / 1e3 }
		addedLB, addedHA := p99(lbLat)-p99(direct), p99(haLat)-p99(direct)
		b.ReportMetric(lbConn, "lb-conn/s")
		b.ReportMetric(haConn, "haproxy-conn/s")
		b.ReportMetric(lbConn/haConn, "conn-ratio")
		b.ReportMetric(lbBytes/1e6, "lb-MB/s")
		b.ReportMetric(haBytes/1e6, "haproxy-MB/s")
		b.ReportMetric(lbBytes/haBytes, "bytes-ratio")
		p50 := func(ds []time.Duration) float64 { return float64(percentile(ds, 0.50)) / 1e3 }
		b.ReportMetric(p99(direct), "direct-p99-µs")
		b.ReportMetric(p50(direct), "direct-p50-µs")
		b.ReportMetric(p50(lbLat)-p50(direct), "lb-added-p50-µs")
		b.ReportMetric(p50(haLat)-p50(direct), "haproxy-added-p50-µs")
		b.ReportMetric(addedLB, "lb-added-p99-µs")
		b.ReportMetric(addedHA, "haproxy-added-p99-µs")
		// Latency ratio as the issue frames it: HAProxy's added latency
		// over ours (≥ 0.9 means ours adds at most about 1/0.9 as much).
		if addedLB > 0 {
			b.ReportMetric(addedHA/addedLB, "latency-ratio")
		}
	}
}
