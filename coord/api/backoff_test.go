package api

import (
	"testing"
	"time"
)

func TestJitterSpreadsAroundTheWait(t *testing.T) {
	const d = time.Second
	lo, hi := d, time.Duration(0)
	for range 2000 {
		j := Jitter(d)
		if j < d/2 || j > 3*d/2 {
			t.Fatalf("Jitter(%v) = %v, outside [%v, %v]", d, j, d/2, 3*d/2)
		}
		lo, hi = min(lo, j), max(hi, j)
	}
	// Spread, not a constant: 2,000 draws cover most of the range.
	if lo > 600*time.Millisecond || hi < 1400*time.Millisecond {
		t.Fatalf("2000 draws of Jitter(1s) only spanned %v..%v", lo, hi)
	}
	if Jitter(0) != 0 || Jitter(-time.Second) != 0 {
		t.Fatal("Jitter of no wait must be no wait")
	}
}

func TestBackoffDoublesToItsCeilingAndStartsOver(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	// The unjittered schedule: 100, 200, 400, 800, 1000, 1000 ms.
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		w *= time.Millisecond
		if got := b.Next(); got < w/2 || got > 3*w/2 {
			t.Fatalf("wait %d = %v, want %v ± 50 %%", i, got, w)
		}
	}
	b.Reset()
	if got := b.Next(); got > 150*time.Millisecond {
		t.Fatalf("after Reset the wait is %v, want about Min", got)
	}
}
