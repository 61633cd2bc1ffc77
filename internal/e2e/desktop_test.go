package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ct "github.com/e2em/e2em/internal/clustertest"
	"github.com/e2em/e2em/internal/spawn"
)

// xserver is an Xvfb display the test made.
type xserver struct {
	display string
	t       *testing.T
}

// startX starts Xvfb on a free display; Xvfb, xdotool and ImageMagick
// must be there (make deps installs them; under CI their absence fails).
func startX(t *testing.T) *xserver {
	t.Helper()
	for _, tool := range []string{"Xvfb", "xdotool", "import", "convert", "compare"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing (make deps installs it)", tool)
			}
			t.Skipf("%s is missing (make deps installs it)", tool)
		}
	}
	n := 90
	for ; n < 200; n++ {
		if _, err := os.Stat(fmt.Sprintf("/tmp/.X11-unix/X%d", n)); os.IsNotExist(err) {
			break
		}
	}
	cmd := exec.Command("Xvfb", ":"+strconv.Itoa(n), "-screen", "0", "1280x800x24", "-nolisten", "tcp")
	if err := spawn.Start(cmd, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	x := &xserver{display: ":" + strconv.Itoa(n), t: t}
	ct.Eventually(t, wait, func() error {
		_, err := os.Stat(fmt.Sprintf("/tmp/.X11-unix/X%d", n))
		return err
	})
	return x
}

func (x *xserver) run(args ...string) string {
	x.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "DISPLAY="+x.display)
	out, err := cmd.CombinedOutput()
	if err != nil {
		x.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// click clicks at a point of the window (it sits at the screen's corner:
// Xvfb has no window manager to move it).
func (x *xserver) click(px, py int) {
	x.run("xdotool", "mousemove", strconv.Itoa(px), strconv.Itoa(py), "click", "1")
	time.Sleep(150 * time.Millisecond) // a person's pace; the app draws in between
}

func (x *xserver) typeText(s string) { x.run("xdotool", "type", "--delay", "15", s) }
func (x *xserver) key(k string)      { x.run("xdotool", "key", k) }

// screenshot saves the screen and returns how many colours it has: a
// blank or crashed window has one or two.
func (x *xserver) screenshot(path string) int {
	x.run("import", "-window", "root", "-crop", "960x640+0+0", path) // the window, at the corner
	n, err := strconv.Atoi(strings.TrimSpace(x.run("convert", path, "-format", "%k", "info:")))
	if err != nil {
		x.t.Fatal(err)
	}
	return n
}

// The desktop app in a real window: sign up, log in, send a message to a
// headless client through the command bar, and receive its answer.
func TestDesktopWindowSignsUpAndTalks(t *testing.T) {
	x := startX(t)
	c := sharedCluster(t)
	bin := ct.DesktopBinary(t)
	peer := account(t, c, "xpe", "992")
	// make screenshots keeps them (for the README); a test run does not.
	shots := os.Getenv("E2EM_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	app := exec.Command(bin, "-lb", c.Layout.LB, "-ca", c.CAFile(), "-profile", filepath.Join(t.TempDir(), "window"), "-log-level", "info")
	app.Env = append(os.Environ(), "DISPLAY="+x.display, "LANG=C.UTF-8")
	logFile, _ := os.Create(filepath.Join(t.TempDir(), "app.log"))
	app.Stdout, app.Stderr = logFile, logFile
	if err := spawn.Start(app, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { app.Wait(); close(exited) }()
	t.Cleanup(func() {
		app.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("the app logged:\n%s\nscreenshots in %s", ct.Tail(string(b), 30), shots)
		}
	})
	alive := func() {
		t.Helper()
		select {
		case <-exited:
			t.Fatal("the window's process ended")
		default:
		}
	}
	x.run("xdotool", "search", "--sync", "--name", "^e2em")
	time.Sleep(time.Second)
	if n := x.screenshot(filepath.Join(shots, "1-login.png")); n < 10 {
		t.Fatalf("the log-in screen has %d colours: blank", n)
	}
	// Sign up (the second tab), then log in with the id it fills in.
	x.click(366, 197)
	x.click(530, 236)
	x.typeText("xwin")
	x.click(530, 275)
	x.typeText("991")
	x.click(510, 314)
	x.typeText("password123")
	x.click(510, 353)
	x.typeText("password123")
	x.click(480, 393)
	time.Sleep(2 * time.Second) // the sign-up's round trip
	alive()
	x.click(298, 197)
	x.click(510, 275)
	x.typeText("password123")
	x.key("Return")
	ct.Eventually(t, wait, func() error {
		alive()
		if !x.windowTitled("e2em — xwin991") {
			return fmt.Errorf("not logged in yet (the title names who is)")
		}
		return nil
	})
	x.screenshot(filepath.Join(shots, "2-chats.png"))
	// A message through the command bar reaches the headless client.
	x.key("ctrl+k")
	time.Sleep(300 * time.Millisecond)
	x.typeText("Send xpe992 hello from the window")
	x.key("Return")
	peer.WaitEvent(wait, "message", map[string]string{"from": "xwin991", "body": "hello from the window"})
	x.screenshot(filepath.Join(shots, "3-command-bar.png"))
	x.key("Escape")
	before := filepath.Join(shots, "4-sent.png")
	x.screenshot(before)
	// Its answer reaches the window's engine: acknowledged, and drawn.
	id := peer.Do("Send xwin991 hi window, this is the terminal").S("id")
	peer.WaitEvent(wait, "delivered", map[string]string{"id": id})
	time.Sleep(500 * time.Millisecond)
	after := filepath.Join(shots, "5-answer.png")
	if n := x.screenshot(after); n < 10 {
		t.Fatalf("the conversation has %d colours: blank", n)
	}
	if !x.differ(before, after) {
		t.Fatal("the window did not change when the answer came")
	}
	// The other screens, for the README (make screenshots).
	x.click(896, 21) // Safety number
	time.Sleep(time.Second)
	x.screenshot(filepath.Join(shots, "6-safety-number.png"))
	x.key("Escape")
	x.click(479, 375) // its Close button
	time.Sleep(300 * time.Millisecond)
	peer.Do("Create chess992")
	peer.Do("Create choir992")
	x.click(145, 61) // Groups…
	time.Sleep(time.Second)
	x.screenshot(filepath.Join(shots, "7-groups.png"))
	alive()
}

// windowTitled reports whether a window's title matches.
func (x *xserver) windowTitled(title string) bool {
	cmd := exec.Command("xdotool", "search", "--name", title)
	cmd.Env = append(os.Environ(), "DISPLAY="+x.display)
	out, err := cmd.Output()
	return err == nil && strings.TrimSpace(string(out)) != ""
}

// differ reports whether two screenshots differ in any pixel (ImageMagick's
// compare exits 1 for different images, 0 for the same).
func (x *xserver) differ(a, b string) bool {
	x.t.Helper()
	err := exec.Command("compare", "-metric", "AE", a, b, "null:").Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return false
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return true
	}
	x.t.Fatalf("compare %s %s: %v", a, b, err)
	return false
}
