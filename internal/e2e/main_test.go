package e2e

import (
	"os"
	"sync"
)

var (
	tempMu   sync.Mutex
	tempDirs []string
)

// mustTempDir makes a folder that lives until the whole test binary ends
// (the shared cluster's data outlives the test that started it).
func mustTempDir() string {
	d, err := os.MkdirTemp("", "e2em-e2e-")
	if err != nil {
		panic(err)
	}
	tempMu.Lock()
	tempDirs = append(tempDirs, d)
	tempMu.Unlock()
	return d
}

func cleanTempDirs() {
	tempMu.Lock()
	defer tempMu.Unlock()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
}

func exit(code int) { os.Exit(code) }
