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
)

// interopEcho is the protocol the js-libp2p peer and the go-libp2p peer of
// TestJSLibp2pThroughCoordinatorRelay answer.
const interopEcho = "/e2em-interop/echo/1.0.0"

// A libp2p implementation we did not write — js-libp2p under Node.js, from
// the npm registry (testdata/jslibp2p, versions pinned by its lock file) —
// reserves a slot on a real coordinator's circuit relay v2 (TCP, Noise,
// yamux, identify); a go-libp2p peer reaches it through that relay, and it
// reaches a go-libp2p peer that reserved on the same relay.
func TestJSLibp2pThroughCoordinatorRelay(t *testing.T) {
	dir := jsLibp2pPeer(t)
	relay := soleRelay(t)
	relayAddr := relay.Addrs[0].String() + "/p2p/" + relay.ID.String()

	cmd := exec.Command("node", "relay-echo.mjs", relayAddr)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan map[string]string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]string
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	next := func(what string) map[string]string {
		t.Helper()
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("the js-libp2p peer exited before %s", what)
			}
			return m
		case <-time.After(60 * time.Second):
			t.Fatalf("the js-libp2p peer did not report %s within 60 s", what)
		}
		return nil
	}
	ready := next("its relay reservation")
	jsCircuit, err := ma.NewMultiaddr(ready["circuit"])
	if err != nil {
		t.Fatalf("js circuit address %q: %v", ready["circuit"], err)
	}
	js, err := peer.AddrInfoFromP2pAddr(jsCircuit)
	if err != nil || js.ID.String() != ready["peer"] {
		t.Fatalf("js circuit address %s names %v (%v), the peer is %s", jsCircuit, js, err, ready["peer"])
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
	if err := h.Connect(cctx, *js); err != nil {
		t.Fatalf("connect to the js-libp2p peer through the relay: %v", err)
	}
	s, err := h.NewStream(cctx, js.ID, interopEcho)
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
	if _, err := io.WriteString(stdin, "dial "+goCircuit+"\n"); err != nil {
		t.Fatal(err)
	}
	if m := next("the echo from go-libp2p"); m["echoed"] != "hello from js-libp2p" {
		t.Fatalf("js-libp2p dialling %s: %v", goCircuit, m)
	}
}

// jsLibp2pPeer installs testdata/jslibp2p's pinned packages (npm ci) in a
// folder of the test's and returns it. It skips where Node.js 20 or later is
// missing, outside CI.
func jsLibp2pPeer(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("node", "--version").Output()
	major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), ".", 2)[0])
	if err != nil || major < 20 {
		msg := "Node.js 20 or later is needed to run js-libp2p (node --version: " + strings.TrimSpace(string(out)) + ")"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	for _, f := range []string{"package.json", "package-lock.json", "relay-echo.mjs"} {
		b, err := os.ReadFile(filepath.Join("testdata", "jslibp2p", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	npm := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	npm.Dir = dir
	if out, err := npm.CombinedOutput(); err != nil {
		t.Fatalf("npm ci (js-libp2p from the npm registry): %v\n%s", err, out)
	}
	return dir
}
