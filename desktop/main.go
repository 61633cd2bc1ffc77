// Command desktop is e2em's desktop app: a Fyne window over the client
// engine (desktop/ui holds the screens). It reaches the same cluster and
// keeps the same profile as the headless client.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/app"

	"github.com/e2em/e2em/assets"
	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/ui"
)

func main() {
	engine.PrivateFiles()
	cfg := engine.Config{}
	flag.StringVar(&cfg.LB, "lb", "127.0.0.1:7000", "the cluster's balancer (or any coordinator), host:port")
	flag.StringVar(&cfg.CAFile, "ca", "data/ca.pem", "the cluster CA certificate (bootstrap writes it to <data>/ca.pem)")
	flag.StringVar(&cfg.Profile, "profile", defaultProfile(), "profile folder: keys, contacts, history, queue")
	flag.IntVar(&cfg.Port, "port", 0, "libp2p port for TCP and QUIC (0 picks any)")
	flag.StringVar(&cfg.Downloads, "downloads", "", "folder received files land in (default <profile>/downloads)")
	logLevel := flag.String("log-level", "warn", "log level on stderr: debug, info, warn, error")
	flag.Parse()
	var lvl slog.Level
	lvl.UnmarshalText([]byte(*logLevel))
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	a := app.NewWithID("io.e2em.desktop")
	a.SetIcon(fyne.NewStaticResource("icon.png", assets.Icon))
	if cfg.Downloads == "" {
		cfg.Downloads = a.Preferences().String(ui.PrefDownloads) // "" keeps the profile's
	}
	eng, err := engine.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2em:", err)
		os.Exit(1)
	}
	defer eng.Close()
	sub := eng.Subscribe()
	defer sub.Close()
	ui.New(a, eng, sub.Events()).Window().ShowAndRun()
}

func defaultProfile() string {
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".e2em", "profile")
	}
	return ".e2em-profile"
}
