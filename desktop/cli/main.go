// Command cli is e2em's headless client: the client engine behind a
// line-oriented interface. It reads one classic command per line from
// standard input and prints results and incoming messages as lines, or one
// JSON object per line with -json. Tests, benchmarks and scripts drive it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/command"
)

func main() {
	engine.PrivateFiles()
	cfg := engine.Config{}
	fs := flag.NewFlagSet("cli", flag.ExitOnError)
	fs.StringVar(&cfg.LB, "lb", "127.0.0.1:7000", "the cluster's balancer (or any coordinator), host:port")
	fs.StringVar(&cfg.CAFile, "ca", "data/ca.pem", "the cluster CA certificate (bootstrap writes it to <data>/ca.pem)")
	fs.StringVar(&cfg.Profile, "profile", defaultProfile(), "profile folder: keys, contacts, history, queue")
	fs.IntVar(&cfg.Port, "port", 0, "libp2p port for TCP and QUIC (0 picks any)")
	fs.StringVar(&cfg.Listen, "listen", "", "IP for libp2p to listen on (default all)")
	fs.BoolVar(&cfg.RelayOnly, "relay-only", false, "never reveal this machine's addresses: contacts reach you only through the coordinators' relays")
	fs.IntVar(&cfg.RelaysPerPeer, "relays", 0, "how many of the coordinators' relays to hold a reservation on (0: the default, 2; -1: all)")
	fs.StringVar(&cfg.Downloads, "downloads", "", "folder received files land in (default <profile>/downloads)")
	jsonOut := fs.Bool("json", false, "print one JSON object per line")
	logLevel := fs.String("log-level", "warn", "log level on stderr: debug, info, warn, error")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (for benchmarks)")
	fs.Parse(os.Args[1:])
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "cpuprofile:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	var lvl slog.Level
	lvl.UnmarshalText([]byte(*logLevel))
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	out := &printer{w: os.Stdout, json: *jsonOut, bars: map[string]*progressbar.ProgressBar{}}
	eng, err := engine.New(cfg)
	if err != nil {
		out.fail("start", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go out.events(eng.Events())
	lines := make(chan string)
	go readLines(os.Stdin, lines, func(n int) {
		out.fail("", fmt.Errorf("a line of %d bytes is longer than %d; it was not run", n, command.MaxLine))
	})
	out.info("e2em headless client. Type Help for the commands.")
	run(ctx, eng, out, lines)
	eng.Close()
}

func defaultProfile() string {
	if home, err := os.UserHomeDir(); err == nil {
		return home + "/.e2em/profile"
	}
	return ".e2em-profile"
}

func run(ctx context.Context, eng *engine.Engine, out *printer, lines <-chan string) {
	for {
		select {
		case <-ctx.Done():
			return
		case line, ok := <-lines:
			if !ok {
				return
			}
			cmd, err := command.Parse(line)
			if errors.Is(err, command.ErrEmpty) {
				continue
			}
			if err != nil {
				out.fail("", err)
				continue
			}
			r, err := eng.Do(ctx, cmd)
			if err != nil {
				out.fail(r.Command, err)
				continue
			}
			out.answer(r)
			if r.Quit {
				return
			}
		}
	}
}

// readLines sends each line of r to lines, and closes it at the end. A
// line longer than a command may be is not kept whole in memory: it is
// reported (tooLong, with its length) and skipped, and reading goes on.
func readLines(r io.Reader, lines chan<- string, tooLong func(n int)) {
	defer close(lines)
	const keep = command.MaxLine + 2 // a command, its \r\n
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	n := 0 // bytes of the line so far
	for {
		chunk, err := br.ReadSlice('\n')
		n += len(chunk)
		if n <= keep {
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if n > keep {
			tooLong(n)
		} else if n > 0 {
			lines <- strings.TrimRight(string(line), "\r\n")
		}
		line, n = line[:0], 0
		if err != nil {
			return
		}
	}
}

// printer writes results and events as lines, safely from two goroutines;
// in text mode a file on its way has a progress bar.
type printer struct {
	mu      sync.Mutex
	w       io.Writer
	json    bool
	bars    map[string]*progressbar.ProgressBar // by transfer id
	barLine bool                                // a bar is drawn on the current line
}

func (p *printer) line(v any, text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		b, _ := json.Marshal(v)
		p.w.Write(append(b, '\n'))
		return
	}
	// What others wrote cannot add lines or drive the terminal: each line
	// of the text is printed with its control characters written out.
	parts := strings.Split(text, "\n")
	for i, part := range parts {
		parts[i] = engine.Printable(part)
	}
	text = strings.Join(parts, "\n")
	if p.barLine {
		io.WriteString(p.w, "\n")
		p.barLine = false
	}
	io.WriteString(p.w, text+"\n")
}

// barWriter is where progress bars draw: the printer's output, so that
// a line printed meanwhile starts on a line of its own.
type barWriter struct{ p *printer }

func (b barWriter) Write(data []byte) (int, error) {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	b.p.barLine = true
	return b.p.w.Write(data)
}

// progress draws transfer t's bar (text mode).
func (p *printer) progress(t *engine.Transfer) {
	p.mu.Lock()
	bar := p.bars[t.ID]
	if bar == nil {
		bar = progressbar.NewOptions64(max(t.Total, 1),
			progressbar.OptionSetWriter(barWriter{p}),
			progressbar.OptionSetWidth(24),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionShowDescriptionAtLineEnd())
		p.bars[t.ID] = bar
	}
	p.mu.Unlock()
	bar.Describe(t.ProgressText())
	bar.Set64(t.Done)
}

// endProgress completes and forgets transfer t's bar.
func (p *printer) endProgress(t *engine.Transfer) {
	p.mu.Lock()
	bar := p.bars[t.ID]
	delete(p.bars, t.ID)
	p.mu.Unlock()
	if bar != nil && t.State == engine.TransferDone {
		bar.Describe(t.ProgressText())
		bar.Finish()
	}
}

// result is a command's answer as a JSON line: the engine's Result, with
// the line's type and whether it worked.
type result struct {
	Type string `json:"type"`
	OK   bool   `json:"ok"`
	engine.Result
	Error string `json:"error,omitempty"`
}

func (p *printer) answer(r engine.Result) {
	p.line(result{Type: "result", OK: true, Result: r}, r.Text)
}

func (p *printer) fail(cmd string, err error) {
	text := words(err)
	p.line(result{Type: "result", Result: engine.Result{Command: cmd}, Error: text}, "Error: "+text)
}

// words is an engine error as this terminal says it: the engine's plain
// words, and what to type about it here.
func words(err error) string {
	hint := map[engine.ErrorKind]string{
		engine.KindNotLoggedIn:  "use Login <username+rollnumber> <password>",
		engine.KindLoggedIn:     "Logout first",
		engine.KindUnreachable:  "check that it runs (make run) and try again",
		engine.KindTimeout:      "try again",
		engine.KindProfileInUse: "close it first or start with another -profile",
		engine.KindProfileOwned: "start with another -profile to log in as someone else",
	}[engine.KindOf(err)]
	if hint == "" {
		return err.Error()
	}
	return err.Error() + "; " + hint
}

func (p *printer) info(text string) {
	if !p.json {
		p.line(nil, text)
	}
}

func (p *printer) events(ch <-chan engine.Event) {
	for ev := range ch {
		var text string
		switch ev.Kind {
		case engine.EventMessage:
			if ev.Group != "" {
				text = fmt.Sprintf("%s : %s : %s", ev.Group, ev.From, ev.Body)
			} else {
				text = fmt.Sprintf("%s : %s", ev.From, ev.Body)
			}
		case engine.EventDelivered:
			text = fmt.Sprintf("(delivered to %s)", ev.To)
		case engine.EventKeyChanged, engine.EventSecurity:
			text = "Warning: " + ev.Text
		case engine.EventWaiting:
			text = fmt.Sprintf("Note: messages to %s wait: %s", ev.To, ev.Text)
		case engine.EventGroup:
			text = fmt.Sprintf("%s : %s %s the group", ev.Group, ev.From, ev.Text)
		case engine.EventFileOffered, engine.EventFileProgress:
			if p.json {
				break
			}
			if ev.Kind == engine.EventFileOffered && !ev.Transfer.Outgoing {
				p.line(nil, engine.Printable(ev.Text))
			}
			p.progress(ev.Transfer)
			continue
		case engine.EventFileWaiting:
			text = "Note: " + ev.Text
		case engine.EventFileDone, engine.EventFileFailed, engine.EventFileCancelled:
			if !p.json {
				p.endProgress(ev.Transfer)
			}
			text = fileEnd(ev)
		default:
			if !p.json {
				continue
			}
		}
		// An event is one line, whatever its sender put in it.
		p.line(ev, engine.Printable(text))
	}
}

// fileEnd is the line that ends a transfer: the classic "File Sent!", or
// where a received file was saved, or what went wrong.
func fileEnd(ev engine.Event) string {
	t := ev.Transfer
	switch ev.Kind {
	case engine.EventFileDone:
		if !t.Outgoing {
			return ev.Text
		}
		if ev.Text != "" {
			return fmt.Sprintf("File Sent! (%s; not to %s)", t.Name, ev.Text)
		}
		return fmt.Sprintf("File Sent! (%s)", t.Name)
	case engine.EventFileCancelled:
		return fmt.Sprintf("Cancelled: %s: %s", t.Name, ev.Text)
	}
	if t.Finished() {
		return fmt.Sprintf("Error: %s was not sent: %s", t.Name, ev.Text)
	}
	return "Error: " + ev.Text
}
