// Package clustertest starts real e2em clusters for end-to-end tests and
// benchmarks: it builds the coord, lb and bootstrap binaries once per test
// binary, runs bootstrap on free ports in a temporary folder, and gives
// typed access to the balancer, each coordinator and the processes.
package clustertest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/internal/pki"
	"github.com/e2em/e2em/internal/spawn"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// ModuleRoot is the repository root, found from this source file.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binaries builds coord, lb, bootstrap and the headless client e2em-cli
// (once per process) and returns the folder holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "e2em-bin-")
		if buildErr != nil {
			return
		}
		for _, args := range [][]string{
			{"build", "-o", binDir + "/", "./coord", "./lb", "./bootstrap"},
			{"build", "-o", filepath.Join(binDir, "e2em-cli"), "./desktop/cli"},
		} {
			cmd := exec.Command("go", args...)
			cmd.Dir = ModuleRoot()
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				buildErr = fmt.Errorf("build binaries: %v\n%s", err, out.String())
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

var (
	desktopOnce sync.Once
	desktopBin  string
	desktopErr  error
)

// DesktopBinary builds the desktop app (once per process; Fyne and cgo
// make it the slowest build) and returns its path.
func DesktopBinary(t testing.TB) string {
	t.Helper()
	dir := Binaries(t)
	desktopOnce.Do(func() {
		desktopBin = filepath.Join(dir, "e2em")
		cmd := exec.Command("go", "build", "-o", desktopBin, "./desktop")
		cmd.Dir = ModuleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			desktopErr = fmt.Errorf("build the desktop app: %v\n%s", err, out)
		}
	})
	if desktopErr != nil {
		t.Fatal(desktopErr)
	}
	return desktopBin
}

// Layout mirrors bootstrap's run.json.
type Layout struct {
	LB           string `json:"lb"`
	LBMetrics    string `json:"lb_metrics"`
	Coordinators []struct {
		ID      string `json:"id"`
		API     string `json:"api"`
		Raft    string `json:"raft"`
		P2P     int    `json:"p2p_port"`
		Metrics string `json:"metrics"`
	} `json:"coordinators"`
	CA   string         `json:"ca"`
	PIDs map[string]int `json:"pids"`
}

// Cluster is a running bootstrap.
type Cluster struct {
	t       testing.TB
	Dir     string
	Bin     string
	Args    []string
	Layout  Layout
	cmd     *exec.Cmd
	paused  func() // lets a paused bootstrap go on (KeepDown)
	logFile *os.File
	exited  chan struct{}
	conns   sync.Map // addr → *grpc.ClientConn
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Options for Start.
type Options struct {
	N         int
	Voters    int      // how many of the N vote (bootstrap -voters; 0: all)
	Dir       string   // reuse a data folder (a restart); default a new temp dir
	CoordArgs []string // extra coordinator flags
	LBArgs    []string // extra balancer flags
	// Netns runs the cluster inside that network namespace, bound to Host;
	// the test reaches it through sockets made in the namespace.
	Netns, Host string
}

// Start runs bootstrap and waits until every coordinator is healthy and the
// balancer serves.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.N == 0 {
		o.N = 3
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	c := &Cluster{t: t, Dir: o.Dir, Bin: Binaries(t), exited: make(chan struct{}), dial: (&net.Dialer{}).DialContext}
	// Every test person signs up from 127.0.0.1; a test of the sign-up
	// limit sets its own (a later flag wins).
	coordArgs := append([]string{"-max-signups-per-addr", "1000000", "-relay-max-reservations-per-ip", "1024"}, o.CoordArgs...)
	c.Args = []string{"-n", fmt.Sprint(o.N), "-data", o.Dir, "-base-port", "0", "-lb-port", "0", "-bin", c.Bin,
		"-coord-args", strings.Join(coordArgs, " "), "-lb-args", strings.Join(o.LBArgs, " "), "-voters", fmt.Sprint(o.Voters)}
	if o.Host != "" {
		c.Args = append(c.Args, "-host", o.Host)
	}
	var err error
	c.logFile, err = os.OpenFile(filepath.Join(o.Dir, "bootstrap.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(o.Dir, "run.json"))
	c.cmd = exec.Command(filepath.Join(c.Bin, "bootstrap"), c.Args...)
	if o.Netns != "" {
		c.cmd = exec.Command("ip", append([]string{"netns", "exec", o.Netns, filepath.Join(c.Bin, "bootstrap")}, c.Args...)...)
		c.dial = DialerIn(o.Netns)
	}
	c.cmd.Stdout, c.cmd.Stderr = c.logFile, c.logFile
	// If the test binary dies without its cleanups (killed, or its output
	// pipe closed), the cluster stops with it instead of running on.
	if err := spawn.Start(c.cmd, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() { c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("cluster log (last lines):\n%s", Tail(c.Log(), 60))
		}
	})
	c.WaitReady(60 * time.Second)
	return c
}

// WaitReady waits for run.json with every child, every coordinator SERVING,
// and the balancer passing calls.
func (c *Cluster) WaitReady(d time.Duration) {
	c.t.Helper()
	Eventually(c.t, d, func() error {
		select {
		case <-c.exited:
			return fmt.Errorf("bootstrap exited; log:\n%s", c.Log())
		default:
		}
		b, err := os.ReadFile(filepath.Join(c.Dir, "run.json"))
		if err != nil {
			return err
		}
		var l Layout
		if err := json.Unmarshal(b, &l); err != nil {
			return err
		}
		if len(l.PIDs) != len(l.Coordinators)+1 {
			return fmt.Errorf("%d of %d children started", len(l.PIDs), len(l.Coordinators)+1)
		}
		c.Layout = l
		for _, co := range l.Coordinators {
			if err := c.healthy(co.API); err != nil {
				return fmt.Errorf("%s: %w", co.ID, err)
			}
		}
		if err := c.healthy(l.LB); err != nil {
			return err
		}
		return c.balancerSeesAll()
	})
}

// Backend is one row of the balancer's admin API.
type Backend struct {
	Addr    string `json:"addr"`
	Healthy bool   `json:"healthy"`
	Active  int64  `json:"active"`
	Total   uint64 `json:"total"`
}

// Backends asks the balancer's admin API for its backends.
func (c *Cluster) Backends() ([]Backend, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: c.dial}, Timeout: 5 * time.Second}
	token, err := os.ReadFile(filepath.Join(c.Dir, "lb-admin-token"))
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+c.Layout.LBMetrics+"/backends", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /backends: %s", resp.Status)
	}
	var rows []Backend
	return rows, json.NewDecoder(resp.Body).Decode(&rows)
}

func (c *Cluster) balancerSeesAll() error {
	rows, err := c.Backends()
	if err != nil {
		return err
	}
	for _, r := range rows {
		if !r.Healthy {
			return fmt.Errorf("balancer holds %s down", r.Addr)
		}
	}
	if len(rows) != len(c.Layout.Coordinators) {
		return fmt.Errorf("balancer has %d backends", len(rows))
	}
	return nil
}

func (c *Cluster) healthy(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// A connection of its own: through the balancer, a new connection is
	// what shows that routing works, and it must not hold a drain open.
	conn, err := api.Dial(addr, c.CAFile(), c.grpcDialer())
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health %v", resp.Status)
	}
	return nil
}

// CAFile is the cluster CA clients trust.
func (c *Cluster) CAFile() string { return filepath.Join(c.Dir, "ca.pem") }

// Conn is a shared client connection to addr (the balancer or a coordinator).
func (c *Cluster) Conn(addr string) *grpc.ClientConn {
	if v, ok := c.conns.Load(addr); ok {
		return v.(*grpc.ClientConn)
	}
	conn, err := api.Dial(addr, c.CAFile(), c.grpcDialer())
	if err != nil {
		c.t.Fatal(err)
	}
	if v, loaded := c.conns.LoadOrStore(addr, conn); loaded {
		conn.Close()
		return v.(*grpc.ClientConn)
	}
	return conn
}

// ConnFrom is a connection of its own made from the local address ip (any
// of 127.0.0.0/8 on Linux), as another computer would: the coordinators see
// that address, through the balancer's PROXY header too.
func (c *Cluster) ConnFrom(addr, ip string) *grpc.ClientConn {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	conn, err := api.Dial(addr, c.CAFile(), grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", a)
	}))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}

// NewConn is a connection nobody else shares (its own TCP connection).
func (c *Cluster) NewConn(addr string) *grpc.ClientConn {
	conn, err := api.Dial(addr, c.CAFile(), c.grpcDialer())
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}

// LB is a Coordinator client through the balancer.
func (c *Cluster) LB() api.CoordinatorClient { return api.NewCoordinatorClient(c.Conn(c.Layout.LB)) }

// Coord is a Coordinator client straight to coordinator i (0-based).
func (c *Cluster) Coord(i int) api.CoordinatorClient {
	return api.NewCoordinatorClient(c.Conn(c.Layout.Coordinators[i].API))
}

// Admin is a Cluster client to coordinator i, with c1's certificate (only
// coordinators may call it).
func (c *Cluster) Admin(i int) api.ClusterClient {
	cfg, err := pki.ClientConfig(c.CAFile(), filepath.Join(c.Dir, "c1", "tls", "cert.pem"), filepath.Join(c.Dir, "c1", "tls", "key.pem"))
	if err != nil {
		c.t.Fatal(err)
	}
	addr := c.Layout.Coordinators[i].API
	key := "admin:" + addr
	if v, ok := c.conns.Load(key); ok {
		return api.NewClusterClient(v.(*grpc.ClientConn))
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(withServerName(cfg, addr))), c.grpcDialer())
	if err != nil {
		c.t.Fatal(err)
	}
	c.conns.Store(key, conn)
	return api.NewClusterClient(conn)
}

// Leader returns the index of the coordinator that leads now.
func (c *Cluster) Leader() (int, error) {
	i, _, err := c.LeaderTerm()
	return i, err
}

// LeaderTerm returns the leader's index and the highest Raft term any
// coordinator reports with a leader.
func (c *Cluster) LeaderTerm() (int, uint64, error) {
	best, term := -1, uint64(0)
	for i := range c.Layout.Coordinators {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := c.Admin(i).Status(ctx, &api.StatusRequest{})
		cancel()
		if err != nil || st.LeaderId == "" || st.Term < term {
			continue
		}
		for j, co := range c.Layout.Coordinators {
			if co.ID == st.LeaderId {
				best, term = j, st.Term
			}
		}
	}
	if best < 0 {
		return -1, 0, fmt.Errorf("no coordinator knows a leader")
	}
	return best, term, nil
}

// Refresh rereads run.json (PIDs change when bootstrap restarts a child).
func (c *Cluster) Refresh() {
	b, err := os.ReadFile(filepath.Join(c.Dir, "run.json"))
	if err == nil {
		json.Unmarshal(b, &c.Layout)
	}
}

// Signal sends sig to a child ("c1".."cN" or "lb").
func (c *Cluster) Signal(child string, sig syscall.Signal) int {
	c.Refresh()
	pid := c.Layout.PIDs[child]
	if pid == 0 {
		c.t.Fatalf("no pid for %s", child)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		c.t.Fatalf("signal %s: %v", child, err)
	}
	return pid
}

// KeepDown kills a child and keeps it down (bootstrap, which would start
// it again within a second, is paused meanwhile; the children write their
// logs themselves, so nothing waits on it). bringBack lets bootstrap go on,
// which starts the child again; Stop and the test's end do too.
func (c *Cluster) KeepDown(child string) (bringBack func()) {
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		c.t.Fatalf("pause bootstrap: %v", err)
	}
	var once sync.Once
	bringBack = func() { once.Do(func() { c.cmd.Process.Signal(syscall.SIGCONT) }) }
	c.paused = bringBack
	c.t.Cleanup(bringBack)
	c.Signal(child, syscall.SIGKILL)
	return bringBack
}

// Calls are the calls of one method (its full gRPC path) the
// coordinators answered since they started, summed over them, by status
// code ("OK", "Unavailable", …).
func (c *Cluster) Calls(method string) map[string]float64 {
	byCode := map[string]float64{}
	for _, co := range c.Layout.Coordinators {
		families, err := Metrics(co.Metrics)
		if err != nil {
			c.t.Fatal(err)
		}
		for _, m := range families["e2em_coord_requests_total"].GetMetric() {
			var name, code string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "method":
					name = l.GetValue()
				case "code":
					code = l.GetValue()
				}
			}
			if name == method {
				byCode[code] += m.GetCounter().GetValue()
			}
		}
	}
	return byCode
}

// LogInCalls counts the LogIn calls the coordinators answered since they
// started, whatever the outcome: each is an argon2id hash.
func (c *Cluster) LogInCalls() float64 {
	n := 0.0
	for _, v := range c.Calls(api.Coordinator_LogIn_FullMethodName) {
		n += v
	}
	return n
}

// Stop ends bootstrap with SIGTERM (as Ctrl-C would) and waits.
func (c *Cluster) Stop() {
	if c.paused != nil {
		c.paused()
	}
	select {
	case <-c.exited:
	default:
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(30 * time.Second):
			c.cmd.Process.Kill()
			<-c.exited
		}
	}
	c.conns.Range(func(k, v any) bool {
		v.(*grpc.ClientConn).Close()
		c.conns.Delete(k)
		return true
	})
	c.logFile.Close()
}

// Exited is closed when bootstrap has exited.
func (c *Cluster) Exited() <-chan struct{} { return c.exited }

// Log is bootstrap's and its children's output so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "bootstrap.log"))
	return string(b)
}

// Eventually retries f until it returns nil or d passes.
func Eventually(t testing.TB, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func withServerName(cfg *tls.Config, addr string) *tls.Config {
	cfg = cfg.Clone()
	cfg.ServerName, _, _ = net.SplitHostPort(addr)
	return cfg
}

func Tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// RemoveBinaries deletes the built binaries; TestMain calls it at the end.
func RemoveBinaries() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// grpcDialer dials through the cluster's namespace, if it has one.
func (c *Cluster) grpcDialer() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return c.dial(ctx, "tcp", addr)
	})
}

// Metrics reads the Prometheus text a /metrics endpoint (host:port) serves,
// by metric family.
func Metrics(addr string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: not Prometheus text: %w", addr, err)
	}
	return families, nil
}
