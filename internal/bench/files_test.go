package bench

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/e2em/e2em/desktop/engine/e2e"
	"github.com/e2em/e2em/desktop/engine/wire"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// chunkCeiling is the most a file transfer between two processes of this
// machine can reach: file chunks sealed and opened (3DES-CBC and
// HMAC-SHA256, both ways) on every core at once for d, in bytes of file
// per second. Measured in the same run as what is compared with it.
func chunkCeiling(d time.Duration) float64 {
	key, _ := e2e.NewFileKey(rand.Reader)
	pt := make([]byte, wire.ChunkSize)
	var mu sync.Mutex
	var total int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(0)
			for time.Since(start) < d {
				rec, _ := e2e.SealChunk(key, 1, pt, rand.Reader)
				e2e.OpenChunk(key, 1, rec, 1)
				n += int64(len(pt))
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(total) / time.Since(start).Seconds()
}

// fileClient is a headless client process signed up and logged in.
func fileClient(b *testing.B, c *ct.Cluster, login string, args ...string) *ct.Client {
	cl := c.StartClient(b, login, ct.ClientOptions{Args: append([]string{"-log-level", "warn"}, args...)})
	cl.Do(fmt.Sprintf("Sign up %s %s password123", login[:len(login)-3], login[len(login)-3:]))
	cl.Do("Login " + login + " password123")
	return cl
}

// timedSend sends path from a to one recipient (login, client r) and
// returns the whole time (from Send_file until the recipient has checked
// and saved the file: hashing, offer, chunks, hash check) and the time of
// the chunks alone (the recipient's offer event to its done event).
func timedSend(b *testing.B, a, r *ct.Client, login, path, sum string) (whole, chunks time.Duration) {
	start := time.Now()
	a.Do("Send_file " + path + " " + login)
	done := r.WaitFile(30*time.Minute, filepath.Base(path), "")
	whole = time.Since(start)
	if got := ct.FileSHA256(b, ct.TransferOf(done)["path"].(string)); got != sum {
		b.Fatalf("arrived with SHA-256 %s, want %s", got, sum)
	}
	var offered time.Time
	for _, l := range r.Lines() {
		if l.S("type") == "file_offered" && ct.TransferOf(l)["name"] == filepath.Base(path) {
			offered, _ = time.Parse(time.RFC3339Nano, l.S("time"))
		}
	}
	end, _ := time.Parse(time.RFC3339Nano, done.S("time"))
	return whole, end.Sub(offered)
}

// BenchmarkFileThroughput sends a 100 MB file between two client processes
// directly, and between two that only reach each other through a
// coordinator's relay, beside the 3DES ceiling of the machine measured in
// the same run (DESIGN §7).
func BenchmarkFileThroughput(b *testing.B) {
	const size = 100 << 20
	c := ct.Start(b, ct.Options{N: 3, CoordArgs: []string{"-log-level", "warn"}})
	a, r := fileClient(b, c, "tpa101"), fileClient(b, c, "tpb102")
	ra, rr := fileClient(b, c, "tra103", "-relay-only"), fileClient(b, c, "trb104", "-relay-only")
	mbs := func(d time.Duration) float64 { return size / d.Seconds() / 1e6 }
	for i := 0; i < b.N; i++ {
		ceiling := chunkCeiling(3*time.Second) / 1e6
		path, sum := ct.RandomFile(b, fmt.Sprintf("direct%d.bin", i), size)
		dWhole, dChunks := timedSend(b, a, r, "tpb102", path, sum)
		path, sum = ct.RandomFile(b, fmt.Sprintf("relayed%d.bin", i), size)
		rWhole, rChunks := timedSend(b, ra, rr, "trb104", path, sum)
		b.ReportMetric(ceiling, "ceiling-MB/s")
		b.ReportMetric(mbs(dChunks), "direct-MB/s")
		b.ReportMetric(mbs(dWhole), "direct-whole-MB/s")
		b.ReportMetric(mbs(rChunks), "relayed-MB/s")
		b.ReportMetric(mbs(rWhole), "relayed-whole-MB/s")
		b.ReportMetric(mbs(dChunks)/ceiling, "direct/ceiling")
		b.ReportMetric(mbs(rChunks)/mbs(dChunks), "relayed/direct")
	}
}

// BenchmarkFileMemory sends a 2 GiB file and reports the peak resident
// memory of the sending and the receiving process (goal: under 150 MB
// each, whatever the size: chunks stream from and to disk).
func BenchmarkFileMemory(b *testing.B) {
	const size = 2 << 30
	c := ct.Start(b, ct.Options{N: 3, CoordArgs: []string{"-log-level", "warn"}})
	for i := 0; i < b.N; i++ {
		a, r := fileClient(b, c, fmt.Sprintf("mea%d01", i)), fileClient(b, c, fmt.Sprintf("meb%d02", i))
		path, sum := ct.RandomFile(b, "big.bin", size)
		// The whole life of each process, and the transfer alone (from
		// after the log-in, whose argon2id takes 64 MiB for a moment).
		var lifePeak, before [2]int64
		for j, cl := range []*ct.Client{a, r} {
			lifePeak[j], _ = cl.PeakRSS()
			before[j], _ = cl.RSS()
			if err := cl.ResetPeakRSS(); err != nil {
				b.Fatal(err)
			}
		}
		whole, chunks := timedSend(b, a, r, fmt.Sprintf("meb%d02", i), path, sum)
		var peak [2]int64
		for j, cl := range []*ct.Client{a, r} {
			var err error
			if peak[j], err = cl.PeakRSS(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(peak[0])/1e6, "sender-peak-RSS-MB")
		b.ReportMetric(float64(peak[1])/1e6, "receiver-peak-RSS-MB")
		b.ReportMetric(float64(before[0])/1e6, "sender-RSS-before-MB")
		b.ReportMetric(float64(before[1])/1e6, "receiver-RSS-before-MB")
		b.ReportMetric(float64(max(lifePeak[0], lifePeak[1]))/1e6, "log-in-peak-RSS-MB")
		b.ReportMetric(size/chunks.Seconds()/1e6, "MB/s")
		b.ReportMetric(whole.Seconds(), "whole-s")
	}
}

// BenchmarkGroupFile sends one 100 MB file to a group of 20 members (sealed
// once, fetched by all at once) beside 20 sequential direct sends of it to
// the same people.
func BenchmarkGroupFile(b *testing.B) {
	const size, members = 100 << 20, 20
	c := ct.Start(b, ct.Options{N: 3, CoordArgs: []string{"-log-level", "warn"}})
	sender := fileClient(b, c, "gfs100")
	sender.Do("Create filegroup")
	var group []*ct.Client
	var logins []string
	for m := 0; m < members; m++ {
		login := fmt.Sprintf("gm%c%03d", 'a'+m, 101+m) // usernames are unique
		cl := fileClient(b, c, login)
		cl.Do("Join filegroup")
		group = append(group, cl)
		logins = append(logins, login)
	}
	for i := 0; i < b.N; i++ {
		path, sum := ct.RandomFile(b, fmt.Sprintf("group%d.bin", i), size)
		start := time.Now()
		id := sender.Do("Send_group_File " + path + " 1 filegroup").S("id")
		sender.WaitFile(60*time.Minute, "", id)
		grouped := time.Since(start)
		for _, cl := range group {
			if got := ct.FileSHA256(b, ct.TransferOf(cl.WaitFile(time.Minute, filepath.Base(path), ""))["path"].(string)); got != sum {
				b.Fatalf("%s got %s", cl.Name, got)
			}
		}
		path, sum = ct.RandomFile(b, fmt.Sprintf("oneby%d.bin", i), size)
		start = time.Now()
		for m, cl := range group {
			timedSend(b, sender, cl, logins[m], path, sum)
		}
		sequential := time.Since(start)
		b.ReportMetric(grouped.Seconds(), "group-s")
		b.ReportMetric(sequential.Seconds(), "20-direct-s")
		b.ReportMetric(grouped.Seconds()/sequential.Seconds(), "group/sequential")
		b.ReportMetric(members, "members")
	}
}
