package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/desktop/engine/p2p"
	ct "github.com/e2em/e2em/internal/clustertest"
	"github.com/e2em/e2em/internal/loadgen"
)

// A crowd larger than one process's descriptors allow (three a person)
// is split: BenchmarkManyOnline runs this test binary again as a crowd
// worker holding a share of the people, each worker behind a balancer of
// its own (two descriptors a person there too). The worker speaks JSON
// lines: it reports each phase on stdout and waits for the next command
// on stdin.
const workerEnv = "E2EM_CROWD_WORKER"

// workerConfig is what a worker is given, as JSON in workerEnv.
type workerConfig struct {
	LB, CAFile string
	From, To   int
	Relays     []string // relay multiaddrs, each with /p2p/<id>
}

// workerReport is one line a worker writes.
type workerReport struct {
	Phase    string              `json:"phase"` // "grpc", "ready", "storm", "error"
	Err      string              `json:"err,omitempty"`
	LogInsMS int64               `json:"logins_ms,omitempty"`
	StormMS  int64               `json:"storm_ms,omitempty"`
	Missing  int                 `json:"missing,omitempty"`
	Circuits map[string][]string `json:"circuits,omitempty"` // peer id → circuits
}

func TestMain(m *testing.M) {
	if raw := os.Getenv(workerEnv); raw != "" {
		os.Exit(crowdWorker(raw))
	}
	os.Exit(m.Run())
}

// crowdWorker brings its people online without relays ("grpc"), on
// "hosts" starts their libp2p hosts and reservations ("ready", with every
// circuit), on "storm" drops and restores every connection at once
// ("storm"), and on "quit" or the end of stdin leaves.
func crowdWorker(raw string) int {
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		out.Encode(workerReport{Phase: "error", Err: err.Error()})
		return 1
	}
	var cfg workerConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return fail(err)
	}
	relays, err := p2p.ParseAddrInfo(cfg.Relays)
	if err != nil {
		return fail(err)
	}
	raiseFileLimit(uint64(4*(cfg.To-cfg.From) + 4096))
	bg := context.Background()
	crowd := &loadgen.Crowd{LB: cfg.LB, CAFile: cfg.CAFile, Relays: -1}
	people := crowd.Add(cfg.From, cfg.To)
	defer loadgen.Each(people, 256, func(p *loadgen.Person) error { p.Close(); return nil })
	logins, err := loadgen.Online(bg, people, relays, 64)
	if err != nil {
		return fail(err)
	}
	out.Encode(workerReport{Phase: "grpc", LogInsMS: logins.Milliseconds()})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "hosts":
			crowd.Relays = 0
			if err := loadgen.FirstError(loadgen.Each(people, 64, func(p *loadgen.Person) error { return p.StartHost(relays) })); err != nil {
				return fail(err)
			}
			wctx, cancel := context.WithTimeout(bg, 2*time.Minute)
			missing := loadgen.WaitReserved(wctx, people, p2p.RelaysPerPeer)
			cancel()
			circuits := map[string][]string{}
			for _, p := range people {
				circuits[p.Host.ID().String()] = p.Circuits()
			}
			out.Encode(workerReport{Phase: "ready", Missing: missing, Circuits: circuits})
		case "storm":
			took, err := loadgen.Storm(bg, people)
			r := workerReport{Phase: "storm", StormMS: took.Milliseconds()}
			if err != nil {
				r.Err = err.Error()
			}
			out.Encode(r)
		case "quit":
			return 0
		}
	}
	return 0
}

// worker is a running crowd worker, seen from the benchmark.
type worker struct {
	cmd       *exec.Cmd
	in        *os.File
	lines     *bufio.Scanner
	lb        *exec.Cmd
	lbMetrics string
}

// pauseWorkers stops the workers' processes (SIGSTOP: their connections
// stay open, nothing they hold is lost) until the returned function
// resumes them.
func pauseWorkers(b *testing.B, ws []*worker) (resume func()) {
	for _, w := range ws {
		if err := w.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			b.Fatalf("pause a crowd worker: %v", err)
		}
	}
	return func() {
		for _, w := range ws {
			w.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
}

// startWorker starts a balancer of its own in front of c's coordinators
// and a worker process holding people from..to behind it, and waits for
// their gRPC side to be online.
func startWorker(b *testing.B, c *ct.Cluster, relays []string, from, to int) (*worker, workerReport) {
	w := &worker{}
	listen, metrics := freeAddr(b), freeAddr(b)
	var apis []string
	for _, co := range c.Layout.Coordinators {
		apis = append(apis, co.API)
	}
	w.lb = exec.Command(filepath.Join(c.Bin, "lb"), "-listen", listen, "-metrics", metrics, "-health-ca", c.CAFile(),
		"-backend", strings.Join(apis, ","), "-max-conns", fmt.Sprint(to-from+1024))
	w.lb.Stderr = os.Stderr
	if err := w.lb.Start(); err != nil {
		b.Fatal(err)
	}
	w.lbMetrics = metrics
	b.Cleanup(func() { w.lb.Process.Kill(); w.lb.Wait() })
	// Ready once it has found healthy backends: a call goes through.
	ct.Eventually(b, 30*time.Second, func() error {
		conn, err := api.Dial(listen, c.CAFile())
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = api.NewCoordinatorClient(conn).Relays(ctx, &api.RelaysRequest{})
		return err
	})
	cfg, err := json.Marshal(workerConfig{LB: listen, CAFile: c.CAFile(), From: from, To: to, Relays: relays})
	if err != nil {
		b.Fatal(err)
	}
	w.cmd = exec.Command(os.Args[0], "-test.run", "^$")
	w.cmd.Env = append(os.Environ(), workerEnv+"="+string(cfg))
	w.cmd.Stderr = os.Stderr
	stdin, err := w.cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	w.in = stdin.(*os.File)
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	w.lines = bufio.NewScanner(stdout)
	w.lines.Buffer(make([]byte, 1<<20), 64<<20)
	if err := w.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { w.in.Close(); w.cmd.Wait() })
	return w, w.next(b, "grpc")
}

// next reads the worker's next report, which must be of phase want.
func (w *worker) next(b *testing.B, want string) workerReport {
	var r workerReport
	for w.lines.Scan() {
		if err := json.Unmarshal(w.lines.Bytes(), &r); err != nil {
			continue // not a report (a library's print)
		}
		if r.Phase == "error" || r.Err != "" {
			b.Fatalf("crowd worker: %s", r.Err)
		}
		if r.Phase != want {
			b.Fatalf("crowd worker said %q, want %q", r.Phase, want)
		}
		return r
	}
	b.Fatalf("crowd worker ended before %q: %v", want, w.lines.Err())
	return r
}

// tell sends the worker a command.
func (w *worker) tell(b *testing.B, cmd string) {
	if _, err := fmt.Fprintln(w.in, cmd); err != nil {
		b.Fatalf("crowd worker: %v", err)
	}
}
