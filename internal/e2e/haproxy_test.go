package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/e2em/e2em/coord/api"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// readmeHAProxyConfig is the HAProxy configuration the README shows.
func readmeHAProxyConfig(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(ct.ModuleRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)### HAProxy instead of `lb`.*?```\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("README.md has no HAProxy configuration block")
	}
	return string(m[1])
}

// The HAProxy configuration in the README works in front of a real
// cluster: HAProxy checks the coordinators over TLS, passes the client
// address with PROXY v2, and a client signs up and logs in through it.
func TestREADMEHAProxyConfigWorks(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("haproxy is missing; make deps installs it")
		}
		t.Skip("haproxy not installed (make deps installs it)")
	}
	c := sharedCluster(t)
	cfg := readmeHAProxyConfig(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := ln.Addr().String()
	ln.Close()
	// Point the README's example at this cluster: its ports and CA.
	cfg = strings.ReplaceAll(cfg, "/path/to/data/ca.pem", c.CAFile())
	cfg = strings.ReplaceAll(cfg, "127.0.0.1:7000", front)
	for i, co := range c.Layout.Coordinators {
		cfg = strings.ReplaceAll(cfg, fmt.Sprintf("127.0.0.1:%d", 7101+i), co.API)
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy rejects the README's configuration: %v\n%s", err, out)
	}
	cmd := exec.Command(haproxy, "-f", path, "-db")
	logf, _ := os.Create(filepath.Join(t.TempDir(), "haproxy.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	cl := api.NewCoordinatorClient(c.NewConn(front))
	ct.Eventually(t, 30*time.Second, func() error {
		_, err := cl.Relays(ctx(t), &api.RelaysRequest{})
		return err
	})
	signUp(t, cl, "hap", "901", "password123")
	resp, err := cl.LogIn(ctx(t), &api.LogInRequest{LoginId: "hap901", Password: "password123"})
	if err != nil {
		t.Fatal(err)
	}
	// The coordinator saw the client, not HAProxy: same host here, but a
	// different port than any HAProxy listens on.
	if _, port, _ := net.SplitHostPort(resp.ObservedAddr); port == "" || strings.HasSuffix(front, ":"+port) {
		t.Fatalf("observed address %q", resp.ObservedAddr)
	}
}
