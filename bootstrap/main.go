// Command bootstrap starts a whole local e2em cluster in one command: on
// first start it makes the cluster CA and certificates, then it runs N
// coordinators (one Raft cluster) and the balancer as child processes,
// restarts any child that crashes (with backoff), and stops them all on
// Ctrl-C or SIGTERM. Started again on the same -data it resumes the same
// cluster. `bootstrap cert` issues a certificate for a coordinator on
// another machine.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/internal/pki"
	"github.com/e2em/e2em/internal/spawn"
)

// Layout is the cluster's shape, fixed at first start and kept in
// <data>/cluster.json so a restart brings back the same addresses.
type Layout struct {
	LB           string  `json:"lb"`
	LBMetrics    string  `json:"lb_metrics"`
	Coordinators []Coord `json:"coordinators"`
}

// Coord is one coordinator's addresses.
type Coord struct {
	ID      string `json:"id"`
	API     string `json:"api"`
	Raft    string `json:"raft"`
	P2P     int    `json:"p2p_port"`
	Metrics string `json:"metrics"`
}

// Running is written to <data>/run.json whenever a child (re)starts: what
// scripts and tests need to find the processes.
type Running struct {
	Layout
	CA   string         `json:"ca"`
	PIDs map[string]int `json:"pids"`
	// Ready turns true once the balancer passes a gRPC health check to a
	// serving coordinator.
	Ready bool `json:"ready"`
}

type options struct {
	n, voters, lbPort, basePort int
	dataDir, host, bin          string
	lbArgs, coordArgs           string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "cert" {
		if err := certCommand(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bootstrap cert:", err)
			os.Exit(1)
		}
		return
	}
	o := &options{}
	fs := flag.NewFlagSet("bootstrap", flag.ExitOnError)
	fs.IntVar(&o.n, "n", 3, "number of coordinators (first start; a larger -n later adds coordinators)")
	fs.IntVar(&o.voters, "voters", 0, "how many of them vote in Raft (0: all); the others join as non-voting members that serve reads and relays, adding relay and client capacity without slowing writes")
	fs.IntVar(&o.lbPort, "lb-port", 7000, "port the balancer listens on (0: any free port)")
	fs.IntVar(&o.basePort, "base-port", 7100, "coordinator i gets API base+i, Raft base+100+i, libp2p base+200+i, metrics base+300+i (0: any free ports)")
	fs.StringVar(&o.dataDir, "data", "data", "data directory: CA, certificates, one folder per coordinator")
	fs.StringVar(&o.host, "host", "127.0.0.1", "address the cluster binds to and puts in certificates")
	fs.StringVar(&o.bin, "bin", "", "folder holding the coord and lb binaries (default: next to bootstrap, then PATH)")
	fs.StringVar(&o.coordArgs, "coord-args", "", "extra flags for every coordinator, space-separated")
	fs.StringVar(&o.lbArgs, "lb-args", "", "extra flags for the balancer, space-separated")
	fs.Parse(os.Args[1:])
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("part", "bootstrap")
	if err := run(o, log); err != nil {
		log.Error("bootstrap failed", "err", err)
		os.Exit(1)
	}
}

func run(o *options, log *slog.Logger) error {
	if o.n < 1 {
		return errors.New("-n must be at least 1")
	}
	ca, created, err := pki.LoadOrCreateCA(o.dataDir)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	if created {
		log.Info("created the cluster CA", "ca", filepath.Join(o.dataDir, "ca.pem"))
	}
	layout, err := loadOrPlanLayout(o)
	if err != nil {
		return err
	}
	for _, c := range layout.Coordinators {
		cert, key := filepath.Join(o.dataDir, c.ID, "tls", "cert.pem"), filepath.Join(o.dataDir, c.ID, "tls", "key.pem")
		if _, err := os.Stat(cert); err == nil {
			continue
		}
		if err := ca.Issue(c.ID, []string{o.host}, cert, key); err != nil {
			return fmt.Errorf("certificate for %s: %w", c.ID, err)
		}
	}
	coordBin, err := findBinary(o.bin, "coord")
	if err != nil {
		return err
	}
	lbBin, err := findBinary(o.bin, "lb")
	if err != nil {
		return err
	}
	caFile, _ := pki.CAFiles(o.dataDir)
	sup := &supervisor{log: log, runFile: filepath.Join(o.dataDir, "run.json"), running: Running{Layout: *layout, CA: caFile, PIDs: map[string]int{}}}

	var apis []string
	for _, c := range layout.Coordinators {
		apis = append(apis, c.API)
	}
	for i, c := range layout.Coordinators {
		args := []string{
			"-id", c.ID, "-data", filepath.Join(o.dataDir, c.ID), "-ca", caFile,
			"-api", c.API, "-raft", c.Raft, "-metrics", c.Metrics,
			"-p2p", fmt.Sprintf("/ip4/%s/tcp/%d,/ip4/%s/udp/%d/quic-v1", o.host, c.P2P, o.host, c.P2P),
			// The balancer runs here too and sends PROXY headers from this address.
			"-trusted-proxies", hostCIDR(o.host) + ",127.0.0.0/8,::1/128",
		}
		if i == 0 {
			args = append(args, "-bootstrap")
		} else {
			args = append(args, "-join", strings.Join(apis[:i], ","))
		}
		if o.voters > 0 && i >= o.voters {
			args = append(args, "-nonvoter")
		}
		args = append(args, strings.Fields(o.coordArgs)...)
		sup.add(c.ID, coordBin, args)
	}
	tokenFile, err := adminToken(o.dataDir)
	if err != nil {
		return err
	}
	lbArgs := []string{"-listen", layout.LB, "-metrics", layout.LBMetrics, "-health-ca", caFile, "-backend", strings.Join(apis, ","),
		"-admin-token-file", tokenFile}
	lbArgs = append(lbArgs, strings.Fields(o.lbArgs)...)
	sup.add("lb", lbBin, lbArgs)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sup.start(ctx)
	go sup.announceReady(ctx, layout.LB, caFile)
	fmt.Printf("e2em cluster: %d coordinators\nbalancer listening on %s\ncluster CA: %s\nmetrics: balancer %s", len(layout.Coordinators), layout.LB, caFile, layout.LBMetrics)
	for _, c := range layout.Coordinators {
		fmt.Printf(", %s %s", c.ID, c.Metrics)
	}
	fmt.Println()
	<-ctx.Done()
	log.Info("stopping the cluster")
	sup.wait()
	log.Info("stopped")
	return nil
}

func loadOrPlanLayout(o *options) (*Layout, error) {
	path := filepath.Join(o.dataDir, "cluster.json")
	var l Layout
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &l); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if o.n < len(l.Coordinators) {
			return nil, fmt.Errorf("%s holds %d coordinators; -n %d cannot shrink it (remove members with the Cluster.Leave call first)", path, len(l.Coordinators), o.n)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	// Ports the layout holds are not free for new members even while
	// nothing listens on them yet (this very start launches their owners).
	taken := l.ports()
	// fixed gives a port asked for by number, or a free one for 0.
	fixed := func(p int) (string, error) {
		if p == 0 {
			return freePort(o.host, taken)
		}
		return net.JoinHostPort(o.host, strconv.Itoa(p)), nil
	}
	// port is fixed for the coordinators' ports, which -base-port 0 makes
	// free ones.
	port := func(p int) (string, error) {
		if o.basePort == 0 {
			p = 0
		}
		return fixed(p)
	}
	var err error
	if l.LB == "" {
		// The balancer's port is its own flag: an explicit -lb-port holds
		// whatever -base-port says.
		if l.LB, err = fixed(o.lbPort); err != nil {
			return nil, err
		}
		lbMetricsPort := 0
		if o.lbPort != 0 {
			lbMetricsPort = o.lbPort + 1
		}
		if l.LBMetrics, err = fixed(lbMetricsPort); err != nil {
			return nil, err
		}
	}
	for i := len(l.Coordinators) + 1; i <= o.n; i++ {
		c := Coord{ID: fmt.Sprintf("c%d", i)}
		if c.API, err = port(o.basePort + i); err != nil {
			return nil, err
		}
		if c.Raft, err = port(o.basePort + 100 + i); err != nil {
			return nil, err
		}
		if c.Metrics, err = port(o.basePort + 300 + i); err != nil {
			return nil, err
		}
		p2p := net.JoinHostPort(o.host, strconv.Itoa(o.basePort+200+i))
		if o.basePort == 0 {
			if p2p, err = freePort(o.host, taken); err != nil {
				return nil, err
			}
		}
		_, ps, _ := net.SplitHostPort(p2p)
		c.P2P, _ = strconv.Atoi(ps)
		l.Coordinators = append(l.Coordinators, c)
	}
	b, _ := json.MarshalIndent(l, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return nil, err
	}
	return &l, nil
}

// hostCIDR is the one-address network of host.
func hostCIDR(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return host + "/128"
	}
	return host + "/32"
}

// ports is every port the layout assigns.
func (l *Layout) ports() map[int]bool {
	taken := map[int]bool{}
	add := func(addr string) {
		if _, p, err := net.SplitHostPort(addr); err == nil {
			if n, err := strconv.Atoi(p); err == nil {
				taken[n] = true
			}
		}
	}
	add(l.LB)
	add(l.LBMetrics)
	for _, c := range l.Coordinators {
		add(c.API)
		add(c.Raft)
		add(c.Metrics)
		taken[c.P2P] = true
	}
	return taken
}

// freePort picks a port nobody uses now and not in taken, and adds it to
// taken. It draws from 20000–32767, below Linux's ephemeral range
// (32768–60999): a port the kernel handed out for "any port" would likely
// be handed out again to some other program's listener or outgoing
// connection before the child binds it.
func freePort(host string, taken map[int]bool) (string, error) {
	return pickPort(host, taken, func() int { return 20000 + mrand.IntN(12768) })
}

// pickPort is freePort with the candidates drawn by next.
func pickPort(host string, taken map[int]bool, next func() int) (string, error) {
	for range 200 {
		port := next()
		if taken[port] {
			continue
		}
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		// QUIC uses the UDP port of the same number.
		if pc, err := net.ListenPacket("udp", addr); err == nil {
			pc.Close()
			taken[port] = true
			return addr, nil
		}
	}
	return "", errors.New("no free port between 20000 and 32767")
}

func findBinary(dir, name string) (string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("no %s binary in %s", name, dir)
		}
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("no %s binary next to bootstrap or on PATH (build it with make build)", name)
	}
	return p, nil
}

// supervisor runs children and restarts the ones that die.
type supervisor struct {
	log      *slog.Logger
	runFile  string
	children []*child
	mu       sync.Mutex
	running  Running
	wg       sync.WaitGroup
}

type child struct {
	name, bin string
	args      []string
}

func (s *supervisor) add(name, bin string, args []string) {
	s.children = append(s.children, &child{name: name, bin: bin, args: args})
}

func (s *supervisor) start(ctx context.Context) {
	for _, c := range s.children {
		s.wg.Add(1)
		go s.keep(ctx, c)
	}
}

func (s *supervisor) wait() { s.wg.Wait() }

// keep runs one child until ctx ends, restarting it with backoff when it
// exits on its own. A child that ran a minute resets the backoff.
func (s *supervisor) keep(ctx context.Context, c *child) {
	defer s.wg.Done()
	backoff := 500 * time.Millisecond
	for {
		cmd := exec.Command(c.bin, c.args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		// Its own process group: Ctrl-C reaches bootstrap, which stops the
		// children in order. If bootstrap itself dies, the kernel stops
		// them too.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		started := time.Now()
		if err := spawn.Start(cmd, syscall.SIGTERM); err != nil {
			s.log.Error("cannot start", "child", c.name, "err", err)
		} else {
			s.setPID(c.name, cmd.Process.Pid)
			s.log.Info("started", "child", c.name, "pid", cmd.Process.Pid)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				s.log.Warn("exited; restarting", "child", c.name, "err", err, "after", backoff)
			case <-ctx.Done():
				cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(15 * time.Second):
					s.log.Warn("did not stop in time; killing", "child", c.name)
					cmd.Process.Kill()
					<-done
				}
				s.log.Info("stopped", "child", c.name)
				return
			}
		}
		if time.Since(started) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (s *supervisor) setPID(name string, pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running.PIDs[name] = pid
	s.writeRunning()
}

// announceReady waits until a client could use the cluster through the
// balancer, then says so on stdout and in run.json.
func (s *supervisor) announceReady(ctx context.Context, lb, caFile string) {
	conn, err := api.Dial(lb, caFile)
	if err != nil {
		s.log.Error("cannot check the balancer", "err", err)
		return
	}
	defer conn.Close()
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			s.mu.Lock()
			s.running.Ready = true
			s.writeRunning()
			s.mu.Unlock()
			fmt.Printf("cluster ready: clients can connect to %s\n", lb)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeRunning saves run.json; the caller holds s.mu.
func (s *supervisor) writeRunning() {
	b, _ := json.MarshalIndent(s.running, "", "  ")
	tmp := s.runFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		os.Rename(tmp, s.runFile)
	}
}

// certCommand issues a coordinator certificate from the CA in -data, for a
// coordinator started by hand on another machine.
func certCommand(args []string) error {
	fs := flag.NewFlagSet("bootstrap cert", flag.ExitOnError)
	dataDir := fs.String("data", "data", "data directory holding ca.pem and ca-key.pem")
	id := fs.String("id", "", "coordinator id, e.g. c4 (required)")
	hosts := fs.String("host", "", "comma-separated IPs and names the coordinator is reached by (required)")
	out := fs.String("out", "", "folder to write cert.pem and key.pem (default <data>/<id>/tls)")
	fs.Parse(args)
	if *id == "" || *hosts == "" {
		return errors.New("-id and -host are required")
	}
	ca, err := pki.LoadCA(pki.CAFiles(*dataDir))
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		dir = filepath.Join(*dataDir, *id, "tls")
	}
	if err := ca.Issue(*id, strings.Split(*hosts, ","), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")); err != nil {
		return err
	}
	fmt.Printf("wrote %s and %s; copy them and %s to the coordinator's machine\n",
		filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(*dataDir, "ca.pem"))
	return nil
}

// AdminTokenFile is where bootstrap keeps the balancer's admin token, in
// the data folder.
const AdminTokenFile = "lb-admin-token"

// adminToken makes (once) the random token the balancer's admin API asks
// for, readable only by its owner, and says where it is.
func adminToken(dataDir string) (string, error) {
	path := filepath.Join(dataDir, AdminTokenFile)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	b := make([]byte, 24)
	rand.Read(b)
	if err := os.WriteFile(path, []byte(base64.RawURLEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write the balancer's admin token: %w", err)
	}
	return path, nil
}
