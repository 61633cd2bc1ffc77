package balance

import (
	"strings"
	"testing"
	"time"
)

func healthyPool(t *testing.T, opts Options, addrs ...string) *Pool {
	t.Helper()
	opts.StartHealthy = true
	p := NewPool(opts)
	for _, a := range addrs {
		p.Add(a)
	}
	return p
}

func TestRoundRobinIsUniform(t *testing.T) {
	p := healthyPool(t, Options{}, "a:1", "b:1", "c:1")
	counts := map[string]int{}
	for i := 0; i < 300; i++ {
		b, err := p.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Addr]++
	}
	for _, a := range []string{"a:1", "b:1", "c:1"} {
		if counts[a] != 100 {
			t.Fatalf("round robin gave %v", counts)
		}
	}
}

func TestUnhealthyAndTriedAreSkipped(t *testing.T) {
	p := healthyPool(t, Options{Fall: 1, Rise: 2}, "a:1", "b:1")
	a := p.Backends()[0]
	if !p.ReportFailure(a) {
		t.Fatal("one failure with fall=1 must take the backend out")
	}
	for i := 0; i < 10; i++ {
		if b, _ := p.Pick(nil); b.Addr != "b:1" {
			t.Fatalf("picked unhealthy %s", b.Addr)
		}
	}
	if _, err := p.Pick([]*Backend{p.Backends()[1]}); err != ErrNoBackend {
		t.Fatalf("nothing left: %v", err)
	}
	p.ReportSuccess(a)
	if a.Healthy() {
		t.Fatal("rise=2: one success must not bring it back")
	}
	p.ReportSuccess(a)
	if !a.Healthy() {
		t.Fatal("two successes must bring it back")
	}
}

func TestLeastConnections(t *testing.T) {
	p := healthyPool(t, Options{Policy: LeastConnections}, "a:1", "b:1", "c:1")
	bs := p.Backends()
	bs[0].Active.Store(5)
	bs[1].Active.Store(1)
	bs[2].Active.Store(3)
	if b, _ := p.Pick(nil); b.Addr != "b:1" {
		t.Fatalf("least connections picked %s", b.Addr)
	}
}

func TestPowerOfTwoAvoidsTheBusiest(t *testing.T) {
	p := healthyPool(t, Options{Policy: PowerOfTwo}, "a:1", "b:1", "c:1")
	p.Backends()[0].Active.Store(100)
	for i := 0; i < 200; i++ {
		if b, _ := p.Pick(nil); b.Addr == "a:1" {
			t.Fatal("p2c picked the busiest of two")
		}
	}
}

func TestSlowStartRampsShare(t *testing.T) {
	now := time.Unix(1000, 0)
	p := NewPool(Options{SlowStart: 10 * time.Second, Now: func() time.Time { return now }})
	p.Add("old:1")
	p.Add("new:1")
	old, fresh := p.Backends()[0], p.Backends()[1]
	old.healthy.Store(true) // settled: healthySince 0
	p.ReportSuccess(fresh)  // healthy from now on
	count := func() int {
		n := 0
		for i := 0; i < 2000; i++ {
			if b, _ := p.Pick(nil); b == fresh {
				n++
			}
		}
		return n
	}
	early := count()
	now = now.Add(11 * time.Second)
	late := count()
	if early >= 400 || late < 900 {
		t.Fatalf("slow start: %d of 2000 at first, %d once settled", early, late)
	}
}

func TestSetKeepsAndRemoves(t *testing.T) {
	p := healthyPool(t, Options{}, "a:1", "b:1")
	b := p.Backends()[1]
	b.Total.Store(7)
	added, removed := p.Set([]string{"b:1", "c:1"})
	if len(added) != 1 || added[0] != "c:1" || len(removed) != 1 || removed[0] != "a:1" {
		t.Fatalf("set: +%v -%v", added, removed)
	}
	if p.Backends()[0].Total.Load() != 7 {
		t.Fatal("a backend that stays must keep its state")
	}
}

func TestParseBackends(t *testing.T) {
	got, err := ParseBackends(strings.NewReader("# coordinators\n127.0.0.1:7101\n\n  [::1]:7102 # v6\n"))
	if err != nil || len(got) != 2 || got[1] != "[::1]:7102" {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"nohost\n", "host:0\n", "host:99999\n", ":80\n"} {
		if _, err := ParseBackends(strings.NewReader(bad)); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func FuzzParseBackends(f *testing.F) {
	f.Add("127.0.0.1:7101\n# c\n[::1]:1\n")
	f.Add("a:b:c")
	f.Fuzz(func(t *testing.T, s string) {
		addrs, err := ParseBackends(strings.NewReader(s))
		if err != nil {
			return
		}
		// Whatever it accepts must be one line of host:port.
		for _, a := range addrs {
			if strings.ContainsAny(a, "\n#") || !strings.Contains(a, ":") {
				t.Fatalf("accepted %q", a)
			}
		}
	})
}

// Panic mode: with no backend passing its checks (a storm slowing them
// past their timeout), connections still go out, spread over every
// backend not removed and not yet tried; a removed one never gets any,
// and with one healthy backend the unhealthy ones get none.
func TestNoHealthyBackendSpreadsOverAllInsteadOfRefusing(t *testing.T) {
	p := healthyPool(t, Options{Fall: 1}, "a:1", "b:1", "c:1")
	a, b, c := p.Backends()[0], p.Backends()[1], p.Backends()[2]
	p.ReportFailure(a)
	p.ReportFailure(b)
	for range 10 {
		if got, _ := p.Pick(nil); got != c {
			t.Fatalf("picked %s with c healthy", got.Addr)
		}
	}
	p.ReportFailure(c)
	p.Remove("c:1")
	counts := map[string]int{}
	for range 100 {
		got, err := p.Pick(nil)
		if err != nil {
			t.Fatalf("no healthy backend refused a connection: %v", err)
		}
		counts[got.Addr]++
	}
	if counts["a:1"] != 50 || counts["b:1"] != 50 || p.Panics() != 100 {
		t.Fatalf("panic picks %v (%d counted), want a and b evenly, never the removed c", counts, p.Panics())
	}
	if _, err := p.Pick([]*Backend{a, b}); err != ErrNoBackend {
		t.Fatalf("every backend tried: %v", err)
	}
}
