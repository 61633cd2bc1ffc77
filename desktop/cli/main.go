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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/command"
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
	jsonOut := fs.Bool("json", false, "print one JSON object per line")
	logLevel := fs.String("log-level", "warn", "log level on stderr: debug, info, warn, error")
	fs.Parse(os.Args[1:])
	var lvl slog.Level
	lvl.UnmarshalText([]byte(*logLevel))
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	out := &printer{w: os.Stdout, json: *jsonOut}
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
	id         string // the message id, for Send
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
		return ok("Send_file", "", errors.New("sending files is not available in this version yet"))
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

// printer writes results and events as lines, safely from two goroutines.
type printer struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
}

func (p *printer) line(v any, text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		b, _ := json.Marshal(v)
		p.w.Write(append(b, '\n'))
		return
	}
	io.WriteString(p.w, text+"\n")
}

type result struct {
	Type    string `json:"type"`
	Command string `json:"command,omitempty"`
	OK      bool   `json:"ok"`
	Text    string `json:"text,omitempty"`
	Error   string `json:"error,omitempty"`
	ID      string `json:"id,omitempty"` // the message id, for Send
}

func (p *printer) answer(a answer) {
	p.line(result{Type: "result", Command: a.name, OK: true, Text: a.text, ID: a.id}, a.text)
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
		default:
			if !p.json {
				continue
			}
		}
		p.line(ev, text)
	}
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
