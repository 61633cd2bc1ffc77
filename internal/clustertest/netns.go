package clustertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NAT kinds for a NATLab.
const (
	// PortKeeping NATs keep the source port where they can and silently
	// drop unsolicited packets, like home routers: hole punching works.
	PortKeeping = "port-keeping"
	// RandomPort NATs pick a random port per destination
	// (MASQUERADE --random-fully): hole punching cannot predict it.
	RandomPort = "random-port"
	// OneRandomPort puts the first client behind a port-keeping NAT and
	// the second behind a random-port one (a home user and a phone on a
	// carrier network).
	OneRandomPort = "one-random-port"
	// SharedNAT puts both clients on one LAN behind one port-keeping NAT.
	SharedNAT = "shared"
	// RSTAnswering NATs keep ports but answer unsolicited TCP with a RST
	// (which breaks TCP simultaneous open; QUIC still punches).
	RSTAnswering = "rst"
)

// NATLab is a small internet in network namespaces that the test makes
// and removes: an "internet" namespace with a bridge on 192.0.0.64/26
// (which go-multiaddr counts as public), where the cluster runs at
// 192.0.0.65, and behind it two clients, each in its own namespace behind
// its own NAT router namespace. Nothing links it to the machine's network.
type NATLab struct {
	Prefix   string
	Internet string    // namespace of the internet and the cluster
	Host     string    // the cluster's address there
	Clients  [2]string // namespaces the clients run in
	Routers  [2]string
}

// RequireRoot skips a test that needs root and ip/iptables; under CI=true
// (where they must be there) it fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	missing := ""
	if os.Geteuid() != 0 {
		missing = "root (to make network namespaces and mounts)"
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil && missing == "" {
			missing = tool + " (make deps installs it)"
		}
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("needs %s, and CI must have it", missing)
	}
	t.Skipf("needs %s", missing)
}

// NewNATLab builds the namespaces with NATs of the given kind.
func NewNATLab(t testing.TB, prefix, kind string) *NATLab {
	t.Helper()
	RequireRoot(t)
	l := &NATLab{
		Prefix: prefix, Internet: prefix + "-inet", Host: "192.0.0.65",
		Clients: [2]string{prefix + "-c1", prefix + "-c2"}, Routers: [2]string{prefix + "-n1", prefix + "-n2"},
	}
	t.Cleanup(l.Remove)
	l.Remove() // leftovers of an earlier run
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	in := func(ns string, args ...string) { run(append([]string{"ip", "netns", "exec", ns}, args...)...) }
	for _, ns := range append([]string{l.Internet}, append(l.Clients[:], l.Routers[:]...)...) {
		run("ip", "netns", "add", ns)
		in(ns, "ip", "link", "set", "lo", "up")
	}
	in(l.Internet, "ip", "link", "add", "br0", "type", "bridge")
	in(l.Internet, "ip", "addr", "add", l.Host+"/26", "dev", "br0")
	in(l.Internet, "ip", "link", "set", "br0", "up")
	for i := 0; i < 2; i++ {
		router, client := l.Routers[i], l.Clients[i]
		wan, port, lan, eth := fmt.Sprintf("%sw%d", prefix, i), fmt.Sprintf("%sb%d", prefix, i), fmt.Sprintf("%sl%d", prefix, i), fmt.Sprintf("%se%d", prefix, i)
		wanIP, lanNet := fmt.Sprintf("192.0.0.%d", 70+i), fmt.Sprintf("10.%d.0", i+1)
		if kind == SharedNAT && i == 1 {
			// The second client joins the first one's LAN (a bridge in
			// the first router); the second router stands idle.
			run("ip", "link", "add", lan, "netns", l.Routers[0], "type", "veth", "peer", "name", eth, "netns", client)
			in(l.Routers[0], "ip", "link", "set", lan, "master", prefix+"lan", "up")
			in(client, "ip", "addr", "add", "10.1.0.3/24", "dev", eth)
			in(client, "ip", "link", "set", eth, "up")
			in(client, "ip", "route", "add", "default", "via", "10.1.0.1")
			continue
		}
		run("ip", "link", "add", wan, "netns", router, "type", "veth", "peer", "name", port, "netns", l.Internet)
		in(l.Internet, "ip", "link", "set", port, "master", "br0", "up")
		in(router, "ip", "addr", "add", wanIP+"/26", "dev", wan)
		in(router, "ip", "link", "set", wan, "up")
		run("ip", "link", "add", lan, "netns", router, "type", "veth", "peer", "name", eth, "netns", client)
		lanDev := lan
		if kind == SharedNAT {
			lanDev = prefix + "lan"
			in(router, "ip", "link", "add", lanDev, "type", "bridge")
			in(router, "ip", "link", "set", lan, "master", lanDev, "up")
		}
		in(router, "ip", "addr", "add", lanNet+".1/24", "dev", lanDev)
		in(router, "ip", "link", "set", lanDev, "up")
		in(client, "ip", "addr", "add", lanNet+".2/24", "dev", eth)
		in(client, "ip", "link", "set", eth, "up")
		in(client, "ip", "route", "add", "default", "via", lanNet+".1")
		in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		masq := []string{"iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"}
		if kind == RandomPort || (kind == OneRandomPort && i == 1) {
			masq = append(masq, "--random-fully")
		}
		in(router, masq...)
		// Answers to what went out pass; anything unsolicited is dropped
		// without a word (a RST would break TCP simultaneous open) — or,
		// for RSTAnswering, TCP is answered with a RST.
		for _, chain := range []string{"FORWARD", "INPUT"} {
			in(router, "iptables", "-A", chain, "-i", wan, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
			if kind == RSTAnswering {
				in(router, "iptables", "-A", chain, "-i", wan, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
			}
			in(router, "iptables", "-A", chain, "-i", wan, "-j", "DROP")
		}
	}
	return l
}

// Partition cuts (or, with cut false, restores) the path between the two
// NATs' public addresses, as a lossy or broken route between two homes
// would; both still reach the cluster.
func (l *NATLab) Partition(t testing.TB, cut bool) {
	t.Helper()
	op := "-I"
	if !cut {
		op = "-D"
	}
	other := "192.0.0.71" // router 1's public address (see NewNATLab)
	for _, rule := range [][]string{{"FORWARD", "-d", other}, {"FORWARD", "-s", other}, {"INPUT", "-s", other}} {
		args := append([]string{"ip", "netns", "exec", l.Routers[0], "iptables", op, rule[0]}, append(rule[1:], "-j", "DROP")...)
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Remove deletes the namespaces (and with them every link and rule).
func (l *NATLab) Remove() {
	for _, ns := range append([]string{l.Internet}, append(l.Clients[:], l.Routers[:]...)...) {
		exec.Command("ip", "netns", "delete", ns).Run()
	}
}

// Wrap runs a command inside namespace ns.
func Wrap(ns string) []string { return []string{"ip", "netns", "exec", ns} }

// DialerIn returns a dial function whose sockets live in namespace ns, so
// the test process can reach a cluster running there.
func DialerIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			// The thread enters the namespace and is never unlocked, so
			// the runtime discards it when this goroutine ends.
			runtime.LockOSThread()
			f, err := os.Open("/run/netns/" + ns)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("enter namespace %s: %w", ns, err)}
				return
			}
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}
