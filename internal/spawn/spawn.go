// Package spawn starts child processes that the kernel stops when their
// parent dies (Linux's parent-death signal), for bootstrap's children and
// the clusters and clients tests start.
//
// The parent-death signal belongs to the thread that forked the child, not
// to the process: a child started from a thread that later exits gets the
// signal then, although its parent lives on. Go ends threads whose
// goroutine exits while locked to them (as code that enters a network
// namespace does), so every child here is forked from one thread that is
// locked for the life of the process and never exits.
package spawn

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

type request struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	once     sync.Once
	requests chan request
)

func spawner() {
	runtime.LockOSThread() // never unlocked: this thread lives as long as the process
	for r := range requests {
		r.done <- r.cmd.Start()
	}
}

// Start starts cmd so that it receives sig when this process dies.
func Start(cmd *exec.Cmd, sig syscall.Signal) error {
	once.Do(func() {
		requests = make(chan request)
		go spawner()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
	done := make(chan error, 1)
	requests <- request{cmd: cmd, done: done}
	return <-done
}
