package spawn

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
)

// A child outlives threads that Go ends (goroutines that exit while locked
// to their thread), and still dies with this process's parent-death signal
// set.
func TestChildSurvivesThreadExits(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := Start(cmd, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL {
		t.Fatal("parent-death signal not set")
	}
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // exits locked: the runtime ends this thread
		}()
	}
	wg.Wait()
	runtime.GC()
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the child died when threads ended: %v", err)
	}
	var ws syscall.WaitStatus
	if pid, _ := syscall.Wait4(cmd.Process.Pid, &ws, syscall.WNOHANG, nil); pid != 0 {
		t.Fatalf("the child exited: %v", ws)
	}
}
