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
	"github.com/e2em/e2em/desktop/engine/downloads"
	"github.com/e2em/e2em/desktop/engine/store"
)

func main() {
	cfg := engine.Config{}
	fs := flag.NewFlagSet("cli", flag.ExitOnError)
	fs.StringVar(&cfg.LB, "lb", "127.0.0.1:7000", "the cluster's balancer (or any coordinator), host:port")
	fs.StringVar(&cfg.CAFile, "ca", "data/ca.pem", "the cluster CA certificate (bootstrap writes it to <data>/ca.pem)")
	fs.StringVar(&cfg.Profile, "profile", defaultProfile(), "profile folder: keys, contacts, history, queue")
	fs.IntVar(&cfg.Port, "port", 0, "libp2p port for TCP and QUIC (0 picks any)")
	fs.StringVar(&cfg.Listen, "listen", "", "IP for libp2p to listen on (default all)")
	fs.BoolVar(&cfg.RelayOnly, "relay-only", false, "never reveal this machine's addresses: contacts reach you only through the coordinators' relays")
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
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 64<<10), command.MaxLine+1)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
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
			if cmd.Kind == command.Quit {
				out.ok("Quit", "Bye!")
				return
			}
			a, err := execute(ctx, eng, cmd)
			if err != nil {
				out.fail(a.name, err)
				continue
			}
			out.answer(a)
		}
	}
}

// answer is what a command printed on success.
type answer struct {
	name, text string
	id         string // the message id (Send) or transfer id (Send_file, Send_group_File)
	transfers  []engine.Transfer
}

// execute runs one command and returns the classic answer.
func execute(ctx context.Context, eng *engine.Engine, c *command.Command) (answer, error) {
	ok := func(name, text string, err error) (answer, error) { return answer{name: name, text: text}, err }
	switch c.Kind {
	case command.SignUp:
		id, err := eng.SignUp(ctx, c.Username, c.Roll, c.Password)
		if err != nil {
			return ok("Sign up", "", err)
		}
		return ok("Sign up", "Successfully SIGNED UP! Your login id is "+id, nil)
	case command.Login:
		return ok("Login", "Successfully LOGGED IN!", eng.Login(ctx, c.LoginID, c.Password))
	case command.Send:
		id, err := eng.Send(ctx, c.To, c.Text)
		return answer{name: "Send", text: "Message Sent!", id: id}, err
	case command.SendGroup:
		n, err := eng.SendGroup(ctx, c.Groups, c.Text)
		return ok("Send_group", fmt.Sprintf("Message Sent! (to %d members)", n), err)
	case command.SendFile, command.SendGroupFile:
		name, to, id := "Send_file", c.To, ""
		var err error
		if c.Kind == command.SendFile {
			id, err = eng.SendFile(ctx, c.Path, c.To)
		} else {
			name, to = "Send_group_File", strings.Join(c.Groups, ", ")
			id, err = eng.SendGroupFile(ctx, c.Path, c.Groups...)
		}
		if err != nil {
			return ok(name, "", err)
		}
		t, _ := eng.Transfer(id)
		if t.Peer != "" {
			to = t.Peer
		}
		return answer{name: name, id: id, text: fmt.Sprintf("Sending %s to %s (transfer %s)", sizeText(t.Name, t.Size), to, id)}, nil
	case command.Transfers:
		ts := eng.Transfers()
		if len(ts) == 0 {
			return answer{name: "Transfers", text: "No transfers."}, nil
		}
		var b strings.Builder
		for i, t := range ts {
			if i > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(transferLine(t))
		}
		return answer{name: "Transfers", text: b.String(), transfers: ts}, nil
	case command.Cancel:
		t, err := eng.Cancel(ctx, c.To)
		if err != nil {
			return ok("Cancel", "", err)
		}
		return answer{name: "Cancel", id: t.ID, text: fmt.Sprintf("Cancelled %s (transfer %s)", t.Name, t.ID)}, nil
	case command.Create:
		name, err := eng.CreateGroup(ctx, c.Groups[0])
		return ok("Create", "Group Created! ("+name+")", err)
	case command.Join:
		name, err := eng.JoinGroup(ctx, c.Groups[0])
		return ok("Join", "Group Joined! ("+name+")", err)
	case command.Leave:
		name, err := eng.LeaveGroup(ctx, c.Groups[0])
		return ok("Leave", "Group Left! ("+name+")", err)
	case command.List, command.ShowMyGroups:
		var groups []engine.Group
		var err error
		name := "List"
		if c.Kind == command.List {
			groups, err = eng.ListGroups(ctx)
		} else {
			name = "Show_my_groups"
			groups, err = eng.MyGroups(ctx)
		}
		if err != nil {
			return ok(name, "", err)
		}
		if len(groups) == 0 {
			return ok(name, "No groups yet.", nil)
		}
		var b strings.Builder
		for i, g := range groups {
			if i > 0 {
				b.WriteByte('\n')
			}
			fmt.Fprintf(&b, "%s : %d", g.Name, g.Members)
		}
		return ok(name, b.String(), nil)
	case command.Members:
		name, members, err := eng.Members(ctx, c.Groups[0])
		if err != nil {
			return ok("Members", "", err)
		}
		return ok("Members", name+" : "+strings.Join(members, ", "), nil)
	case command.History, command.Search:
		name := "History"
		var msgs []*messageLine
		var err error
		if c.Kind == command.History {
			ms, herr := eng.History(ctx, c.To, c.Count)
			msgs, err = lines(ms), herr
		} else {
			name = "Search"
			ms, serr := eng.Search(c.Text, 50)
			msgs, err = lines(ms), serr
		}
		if err != nil {
			return ok(name, "", err)
		}
		if len(msgs) == 0 {
			return ok(name, "No messages.", nil)
		}
		var b strings.Builder
		for i, m := range msgs {
			if i > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(m.String())
		}
		return ok(name, b.String(), nil)
	case command.Verify:
		sn, err := eng.SafetyNumber(ctx, c.To)
		return ok("Verify", "Safety number with "+c.To+": "+sn, err)
	case command.Trust:
		return ok("Trust", "Trusted the new key of "+c.To+"; held messages go now.", eng.Trust(ctx, c.To))
	case command.Logout:
		return ok("Logout", "Successfully LOGGED OUT!", eng.Logout(ctx))
	case command.Help:
		return ok("Help", strings.TrimRight(command.HelpText(), "\n"), nil)
	}
	return answer{}, fmt.Errorf("command not handled")
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
	bar.Describe(barText(t))
	bar.Set64(t.Done)
}

// barText is what a bar says beside itself: the engine's rate (over the
// last moments), not the bar's own guess from when it was drawn first.
func barText(t *engine.Transfer) string {
	verb := "receiving"
	if t.Outgoing {
		verb = "sending"
	}
	text := fmt.Sprintf("%s %s: %s of %s", verb, t.Name, downloads.HumanBytes(t.Done), downloads.HumanBytes(t.Total))
	if t.Rate > 0 {
		text += fmt.Sprintf(", %s/s", downloads.HumanBytes(int64(t.Rate)))
	}
	return text
}

// endProgress completes and forgets transfer t's bar.
func (p *printer) endProgress(t *engine.Transfer) {
	p.mu.Lock()
	bar := p.bars[t.ID]
	delete(p.bars, t.ID)
	p.mu.Unlock()
	if bar != nil && t.State == engine.TransferDone {
		bar.Describe(barText(t))
		bar.Finish()
	}
}

type result struct {
	Type      string            `json:"type"`
	Command   string            `json:"command,omitempty"`
	OK        bool              `json:"ok"`
	Text      string            `json:"text,omitempty"`
	Error     string            `json:"error,omitempty"`
	ID        string            `json:"id,omitempty"` // the message id (Send), the transfer id (files)
	Transfers []engine.Transfer `json:"transfers,omitempty"`
}

func (p *printer) answer(a answer) {
	p.line(result{Type: "result", Command: a.name, OK: true, Text: a.text, ID: a.id, Transfers: a.transfers}, a.text)
}

func (p *printer) ok(cmd, text string) {
	p.line(result{Type: "result", Command: cmd, OK: true, Text: text}, text)
}

func (p *printer) fail(cmd string, err error) {
	p.line(result{Type: "result", Command: cmd, OK: false, Error: err.Error()}, "Error: "+err.Error())
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
				p.line(nil, ev.Text)
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
		p.line(ev, text)
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

// transferLine is one transfer as Transfers lists it.
func transferLine(t engine.Transfer) string {
	who := "from " + t.Peer
	if t.Outgoing {
		who = "to " + t.Peer
		if t.Peer == "" {
			who = "to " + strings.Join(t.Groups, ", ")
		}
	}
	pct := 100.0
	if t.Total > 0 {
		pct = 100 * float64(t.Done) / float64(t.Total)
	}
	line := fmt.Sprintf("%s  %s %s  %s  %.0f%%", t.ID, sizeText(t.Name, t.Size), who, t.State, pct)
	if t.Rate > 0 {
		line += fmt.Sprintf("  %s/s", downloads.HumanBytes(int64(t.Rate)))
	}
	if t.Via != "" {
		line += "  via " + t.Via
	}
	if t.Error != "" {
		line += "  (" + t.Error + ")"
	}
	return line
}

func sizeText(name string, size int64) string {
	return fmt.Sprintf("%s (%s)", name, downloads.HumanBytes(size))
}

type messageLine struct {
	when  time.Time
	who   string
	body  string
	state string
}

func (m *messageLine) String() string {
	s := fmt.Sprintf("%s %s : %s", m.when.Format("2006-01-02 15:04"), m.who, m.body)
	if m.state != "" {
		s += " [" + m.state + "]"
	}
	return s
}

func lines(ms []*store.Message) []*messageLine {
	out := make([]*messageLine, 0, len(ms))
	for _, m := range ms {
		l := &messageLine{when: m.Sent, who: m.From, body: m.Body}
		if m.Group != "" {
			l.who = m.Group + " : " + m.From
		}
		if m.Outgoing {
			l.state = m.State
		}
		out = append(out, l)
	}
	return out
}
