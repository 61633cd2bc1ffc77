package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/grpc/codes"

	"github.com/e2em/e2em/coord/api"
)

// interopEcho is the protocol the js-libp2p peer and the go-libp2p peer of
// TestJSLibp2pThroughCoordinatorRelay answer.
const interopEcho = "/e2em-interop/echo/1.0.0"

// A libp2p implementation we did not write — js-libp2p under Node.js, from
// the npm registry (testdata/node, versions pinned by its lock file) —
// reserves a slot on a real coordinator's circuit relay v2 (TCP, Noise,
// yamux, identify); a go-libp2p peer reaches it through that relay, and it
// reaches a go-libp2p peer that reserved on the same relay.
func TestJSLibp2pThroughCoordinatorRelay(t *testing.T) {
	dir := nodeProject(t)
	relay := soleRelay(t)
	relayAddr := relay.Addrs[0].String() + "/p2p/" + relay.ID.String()

	node := startNode(t, "the js-libp2p peer", dir, "relay-echo.mjs", relayAddr)
	next := node.next
	var ready map[string]string
	next("its relay reservation", &ready)
	jsCircuit, err := ma.NewMultiaddr(ready["circuit"])
	if err != nil {
		t.Fatalf("js circuit address %q: %v", ready["circuit"], err)
	}
	jsPeer, err := peer.AddrInfoFromP2pAddr(jsCircuit)
	if err != nil || jsPeer.ID.String() != ready["peer"] {
		t.Fatalf("js circuit address %s names %v (%v), the peer is %s", jsCircuit, jsPeer, err, ready["peer"])
	}

	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	h.SetStreamHandler(interopEcho, func(s network.Stream) {
		defer s.Close()
		io.Copy(s, s)
	})
	cctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(context.Background(), "interop"), 30*time.Second)
	defer cancel()

	// go-libp2p → js-libp2p, through the coordinator.
	if err := h.Connect(cctx, *jsPeer); err != nil {
		t.Fatalf("connect to the js-libp2p peer through the relay: %v", err)
	}
	s, err := h.NewStream(cctx, jsPeer.ID, interopEcho)
	if err != nil {
		t.Fatalf("open an echo stream to the js-libp2p peer: %v", err)
	}
	if via := s.Conn().RemoteMultiaddr().String(); !strings.Contains(via, "/p2p-circuit") {
		t.Fatalf("the stream to the js-libp2p peer went over %s, not the relay", via)
	}
	const text = "hello from go-libp2p"
	if _, err := s.Write([]byte(text)); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, len(text))
	if _, err := io.ReadFull(s, got); err != nil || string(got) != text {
		t.Fatalf("js-libp2p echoed %q (%v), want %q", got, err, text)
	}
	s.Close()

	// js-libp2p → go-libp2p, through the same coordinator.
	if _, err := client.Reserve(cctx, h, relay); err != nil {
		t.Fatalf("go-libp2p reservation: %v", err)
	}
	goCircuit := relayAddr + "/p2p-circuit/p2p/" + h.ID().String()
	if _, err := io.WriteString(node.stdin, "dial "+goCircuit+"\n"); err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if next("the echo from go-libp2p", &m); m["echoed"] != "hello from js-libp2p" {
		t.Fatalf("js-libp2p dialling %s: %v", goCircuit, m)
	}
}

// nodeProgram is a Node.js program of testdata/node running for a test.
type nodeProgram struct {
	stdin io.WriteCloser
	// next decodes the next JSON line the program printed into v, failing
	// the test if none comes within 60 s.
	next   func(what string, v any)
	exited chan struct{}
	err    error // how it exited, once exited is closed
}

// startNode runs script with args in dir (see nodeProject); it is killed
// when the test ends.
func startNode(t *testing.T, who, dir, script string, args ...string) *nodeProgram {
	t.Helper()
	cmd := exec.Command("node", append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	p := &nodeProgram{exited: make(chan struct{})}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	// Not StdoutPipe: Wait closes that as soon as the program exits, and
	// its last lines could be lost; Wait waits for a pipe of ours to take
	// them all.
	stdout, w := io.Pipe()
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); w.Close(); close(p.exited) }()
	t.Cleanup(func() { stdout.Close(); p.stdin.Close(); cmd.Process.Kill(); <-p.exited })
	lines := make(chan []byte, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- append([]byte(nil), sc.Bytes()...)
		}
		close(lines)
	}()
	p.next = func(what string, v any) {
		t.Helper()
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("%s exited before %s", who, what)
			}
			if err := json.Unmarshal(line, v); err != nil {
				t.Fatalf("%s printed %q for %s: %v", who, line, what, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not report %s within 60 s", who, what)
		}
	}
	return p
}

// nodeProject installs testdata/node's pinned packages (npm ci, no install
// scripts) in a folder of the test's and returns it. It skips where Node.js
// 20 or later is missing (Debian 12's own nodejs is 18; this project's
// machines have 20): these tests check other implementations against ours,
// and no part of e2em needs Node.js. Under CI=true a missing Node.js fails.
func nodeProject(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("node", "--version").Output()
	major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), ".", 2)[0])
	if err != nil || major < 20 {
		why := "Node.js 20 or later is needed for the interoperability tests (node --version: " + strings.TrimSpace(string(out)) + ")"
		if os.Getenv("CI") != "" {
			t.Fatal(why + ", and CI must have it")
		}
		t.Skip(why)
	}
	dir := t.TempDir()
	files, err := filepath.Glob(filepath.Join("testdata", "node", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("testdata/node: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	npm := exec.Command("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")
	npm.Dir = dir
	if out, err := npm.CombinedOutput(); err != nil {
		t.Fatalf("npm ci (packages from the npm registry): %v\n%s", err, out)
	}
	return dir
}

// grpcJSLine is one line the grpc-js client prints.
type grpcJSLine struct {
	Error    string
	SignedUp string
	Refused  *struct {
		Code    int
		Details string
	}
	Found      []string
	Subscribed bool
	MailEvent  string
	Mail       []struct{ From, Envelope string }
}

// A gRPC implementation we did not write — grpc-js under Node.js, the API
// loaded from coord.proto at run time — signs up through the balancer, gets
// a bad sign-up refused with InvalidArgument and a message, looks up an
// account with its token, and follows the Events server stream: told by the
// stream's headers that it is subscribed, it hears of mail a grpc-go client
// puts and fetches it.
func TestGRPCJSClientThroughBalancer(t *testing.T) {
	dir := nodeProject(t)
	c := sharedCluster(t)
	gopher := logIn(t, c.LB(), signUp(t, c.LB(), "gopher", "78", "password123"), "password123")
	protoFile, err := filepath.Abs(filepath.Join("..", "..", "coord", "api", "coord.proto"))
	if err != nil {
		t.Fatal(err)
	}
	node := startNode(t, "the grpc-js client", dir, "grpc-client.mjs", c.Layout.LB, c.CAFile(), protoFile)
	next := node.next
	expect := func(what string, ok func(l grpcJSLine) bool) {
		t.Helper()
		var l grpcJSLine
		if next(what, &l); l.Error != "" || !ok(l) {
			t.Fatalf("grpc-js %s: got %+v", what, l)
		}
	}
	expect("sign-up", func(l grpcJSLine) bool { return l.SignedUp == "grpcjs77" })
	expect("refused sign-up", func(l grpcJSLine) bool {
		return l.Refused != nil && l.Refused.Code == int(codes.InvalidArgument) && l.Refused.Details != ""
	})
	expect("lookup", func(l grpcJSLine) bool { return len(l.Found) == 1 && l.Found[0] == "gopher78" })
	expect("event stream headers", func(l grpcJSLine) bool { return l.Subscribed })
	if _, err := c.LB().PutMail(gopher, &api.PutMailRequest{To: "grpcjs77", Envelope: []byte("sealed")}); err != nil {
		t.Fatal(err)
	}
	expect("mail event", func(l grpcJSLine) bool { return l.MailEvent == "gopher78" })
	expect("fetched mail", func(l grpcJSLine) bool {
		return len(l.Mail) == 1 && l.Mail[0].From == "gopher78" && l.Mail[0].Envelope == "sealed"
	})
	select {
	case <-node.exited:
		if node.err != nil {
			t.Fatalf("grpc-js client: %v", node.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the grpc-js client did not exit after fetching its mail")
	}
}
