package clustertest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/e2em/e2em/internal/spawn"
)

// Client is a running headless client (e2em-cli -json) driven line by line.
type Client struct {
	t       testing.TB
	Name    string
	Profile string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	mu      sync.Mutex
	lines   []Line
	cond    chan struct{}
	exited  chan struct{}
	stderr  *os.File
}

// Line is one JSON object the client printed: a result or an event.
type Line map[string]any

// S returns a string field.
func (l Line) S(k string) string { s, _ := l[k].(string); return s }

// ClientOptions for StartClient.
type ClientOptions struct {
	Profile string   // default: a new folder under the cluster's data
	Args    []string // extra flags
	Wrap    []string // run the client under this command (e.g. ip netns exec ns)
}

// StartClient runs e2em-cli against the cluster's balancer.
func (c *Cluster) StartClient(t testing.TB, name string, o ClientOptions) *Client {
	t.Helper()
	if o.Profile == "" {
		o.Profile = filepath.Join(c.Dir, "profiles", name)
	}
	args := append([]string{"-json", "-lb", c.Layout.LB, "-ca", c.CAFile(), "-profile", o.Profile, "-log-level", "info"}, o.Args...)
	bin := filepath.Join(c.Bin, "e2em-cli")
	var cmd *exec.Cmd
	if len(o.Wrap) > 0 {
		cmd = exec.Command(o.Wrap[0], append(append(o.Wrap[1:], bin), args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cl := &Client{t: t, Name: name, Profile: o.Profile, cmd: cmd, cond: make(chan struct{}, 1), exited: make(chan struct{})}
	var err error
	cl.stdin, err = cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cl.stderr, err = os.Create(filepath.Join(c.Dir, "client-"+name+"-"+fmt.Sprint(time.Now().UnixNano())+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cl.stderr
	if err := spawn.Start(cmd, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	go cl.read(stdout)
	t.Cleanup(func() {
		cl.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(cl.stderr.Name())
			t.Logf("client %s printed:\n%s\nand logged (last lines):\n%s", name, cl.Transcript(), Tail(string(b), 30))
		}
	})
	return cl
}

func (cl *Client) read(r io.Reader) {
	defer close(cl.exited)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l Line
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			l = Line{"type": "text", "text": sc.Text()}
		}
		cl.mu.Lock()
		cl.lines = append(cl.lines, l)
		cl.mu.Unlock()
		select {
		case cl.cond <- struct{}{}:
		default:
		}
	}
}

// Transcript is everything the client printed so far.
func (cl *Client) Transcript() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var b strings.Builder
	for _, l := range cl.lines {
		j, _ := json.Marshal(l)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// Lines returns what the client printed so far.
func (cl *Client) Lines() []Line {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([]Line(nil), cl.lines...)
}

// Do sends one command and returns its result line; it fails the test if
// the command fails, unless wantErr.
func (cl *Client) Do(line string) Line {
	cl.t.Helper()
	r := cl.Try(line)
	if r["ok"] != true {
		cl.t.Fatalf("%s: %q failed: %s", cl.Name, line, r.S("error"))
	}
	return r
}

// Type writes lines as one burst, without waiting for any answer.
func (cl *Client) Type(lines ...string) {
	cl.t.Helper()
	if _, err := io.WriteString(cl.stdin, strings.Join(lines, "\n")+"\n"); err != nil {
		cl.t.Fatalf("%s: write %d lines: %v", cl.Name, len(lines), err)
	}
}

// Try sends one command and returns its result line, failed or not.
func (cl *Client) Try(line string) Line {
	cl.t.Helper()
	cl.mu.Lock()
	start := 0
	for _, l := range cl.lines {
		if l.S("type") == "result" {
			start++
		}
	}
	cl.mu.Unlock()
	if _, err := io.WriteString(cl.stdin, line+"\n"); err != nil {
		cl.t.Fatalf("%s: write %q: %v", cl.Name, line, err)
	}
	var res Line
	cl.WaitFor(60*time.Second, "result of "+line, func(ls []Line) bool {
		n := 0
		for _, l := range ls {
			if l.S("type") == "result" {
				if n == start {
					res = l
					return true
				}
				n++
			}
		}
		return false
	})
	return res
}

// WaitFor waits until cond holds for the printed lines.
func (cl *Client) WaitFor(d time.Duration, what string, cond func([]Line) bool) {
	cl.t.Helper()
	deadline := time.After(d)
	for {
		if cond(cl.Lines()) {
			return
		}
		select {
		case <-cl.cond:
		case <-time.After(100 * time.Millisecond):
		case <-cl.exited:
			if cond(cl.Lines()) {
				return
			}
			cl.t.Fatalf("%s exited while waiting for %s", cl.Name, what)
		case <-deadline:
			cl.t.Fatalf("%s: no %s within %v", cl.Name, what, d)
		}
	}
}

// WaitEvent waits for an event of kind whose fields match.
func (cl *Client) WaitEvent(d time.Duration, kind string, match map[string]string) Line {
	cl.t.Helper()
	var found Line
	cl.WaitFor(d, fmt.Sprintf("%s event %v", kind, match), func(ls []Line) bool {
		for _, l := range ls {
			if l.S("type") == kind && matches(l, match) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// Count counts events of kind whose fields match.
func (cl *Client) Count(kind string, match map[string]string) int {
	return Count(cl.Lines(), kind, match)
}

// WaitCount waits until at least n events of kind match.
func (cl *Client) WaitCount(d time.Duration, n int, kind string, match map[string]string) {
	cl.t.Helper()
	cl.WaitFor(d, fmt.Sprintf("%d %s events %v", n, kind, match), func(ls []Line) bool {
		return Count(ls, kind, match) >= n
	})
}

// Count counts the lines of kind whose fields match.
func Count(ls []Line, kind string, match map[string]string) int {
	n := 0
	for _, l := range ls {
		if l.S("type") == kind && matches(l, match) {
			n++
		}
	}
	return n
}

func matches(l Line, m map[string]string) bool {
	for k, v := range m {
		if l.S(k) != v {
			return false
		}
	}
	return true
}

// Quit ends the client the polite way.
func (cl *Client) Quit() {
	io.WriteString(cl.stdin, "Quit\n")
	cl.stdin.Close()
	select {
	case <-cl.exited:
	case <-time.After(20 * time.Second):
		cl.t.Errorf("%s did not quit", cl.Name)
	}
	cl.cmd.Wait()
}

// Kill ends the client with SIGKILL (a crash, or the app closed hard).
func (cl *Client) Kill() {
	if cl.cmd.Process != nil {
		cl.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-cl.exited
	cl.cmd.Wait()
	cl.stderr.Close()
}

// Signal sends sig to the client process (SIGSTOP and SIGCONT freeze and
// thaw it, as a machine that sleeps).
func (cl *Client) Signal(sig syscall.Signal) {
	if err := cl.cmd.Process.Signal(sig); err != nil {
		cl.t.Fatalf("signal %s: %v", cl.Name, err)
	}
}

// Deliver sends body to recipient (whose client is to) and waits until it
// arrived there and its acknowledgement came back. It returns the last
// "sent" event of the message: how it left the last time it was sent.
func (cl *Client) Deliver(to *Client, recipient, body string) Line {
	cl.t.Helper()
	id := cl.Do("Send " + recipient + " " + body).S("id")
	to.WaitEvent(60*time.Second, "message", map[string]string{"body": body})
	cl.WaitEvent(60*time.Second, "delivered", map[string]string{"id": id})
	var sent Line
	for _, l := range cl.Lines() {
		if l.S("type") == "sent" && l.S("id") == id {
			sent = l
		}
	}
	return sent
}

// Log is what the client has logged on stderr so far.
func (cl *Client) Log() string {
	b, _ := os.ReadFile(cl.stderr.Name())
	return string(b)
}

// PID is the client's process id.
func (cl *Client) PID() int { return cl.cmd.Process.Pid }

// PeakRSS is the most resident memory the client's process has used
// (VmHWM) since it started or since ResetPeakRSS, in bytes.
func (cl *Client) PeakRSS() (int64, error) { return cl.procStatus("VmHWM:") }

// RSS is the client's resident memory now (VmRSS), in bytes.
func (cl *Client) RSS() (int64, error) { return cl.procStatus("VmRSS:") }

// ResetPeakRSS starts PeakRSS again from the memory in use now (Linux's
// clear_refs), so that a benchmark measures one piece of work, not the
// log-in before it (argon2id alone takes 64 MiB for a moment).
func (cl *Client) ResetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", cl.PID()), []byte("5"), 0)
}

func (cl *Client) procStatus(field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cl.PID()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s for process %d", field, cl.PID())
}
