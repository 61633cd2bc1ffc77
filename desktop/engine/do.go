package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/e2em/e2em/desktop/engine/command"
	"github.com/e2em/e2em/desktop/engine/downloads"
)

// Result is what a classic command did, for a face to print or draw: the
// classic answer as text, and the same thing as data.
type Result struct {
	Command   string     `json:"command"`             // the classic name: "Send", "Send_file", …
	Text      string     `json:"text,omitempty"`      // the classic answer ("Message Sent!", …)
	ID        string     `json:"id,omitempty"`        // the message id (Send), the transfer id (files, Cancel)
	Groups    []Group    `json:"groups,omitempty"`    // List, Show_my_groups
	Members   []string   `json:"members,omitempty"`   // Members
	Messages  []Message  `json:"messages,omitempty"`  // History, Search
	Transfers []Transfer `json:"transfers,omitempty"` // Transfers
	Quit      bool       `json:"-"`                   // Quit: the face should end
}

// ErrUnhandled is a command kind Do does not know (a parser newer than
// the engine).
var ErrUnhandled = errors.New("command not handled")

// Do runs one classic command: the one behaviour behind the desktop's
// command bar and the headless client. The error, when there is one, is
// the command's failure; Result.Command names the command either way.
func (e *Engine) Do(ctx context.Context, c *command.Command) (Result, error) {
	r := Result{Command: commandName(c.Kind)}
	var err error
	switch c.Kind {
	case command.SignUp:
		var id string
		if id, err = e.SignUp(ctx, c.Username, c.Roll, c.Password); err == nil {
			r.Text = "Successfully SIGNED UP! Your login id is " + id
		}
	case command.Login:
		if err = e.Login(ctx, c.LoginID, c.Password); err == nil {
			r.Text = "Successfully LOGGED IN!"
		}
	case command.Send:
		if r.ID, err = e.Send(ctx, c.To, c.Text); err == nil {
			r.Text = "Message Sent!"
		}
	case command.SendGroup:
		var n int
		if n, err = e.SendGroup(ctx, c.Groups, c.Text); err == nil {
			r.Text = fmt.Sprintf("Message Sent! (to %d members)", n)
		}
	case command.SendFile, command.SendGroupFile:
		to := c.To
		if c.Kind == command.SendFile {
			r.ID, err = e.SendFile(ctx, c.Path, c.To)
		} else {
			to = strings.Join(c.Groups, ", ")
			r.ID, err = e.SendGroupFile(ctx, c.Path, c.Groups...)
		}
		if err == nil {
			t, _ := e.Transfer(r.ID)
			if t.Peer != "" {
				to = t.Peer
			}
			r.Text = fmt.Sprintf("Sending %s to %s (transfer %s)", sizeText(t.Name, t.Size), to, r.ID)
		}
	case command.Transfers:
		r.Transfers = e.Transfers()
		r.Text = lines(r.Transfers, "No transfers.", TransferLine)
	case command.Cancel:
		var t Transfer
		if t, err = e.Cancel(ctx, c.To); err == nil {
			r.ID, r.Text = t.ID, fmt.Sprintf("Cancelled %s (transfer %s)", t.Name, t.ID)
		}
	case command.Create:
		var name string
		if name, err = e.CreateGroup(ctx, c.Groups[0]); err == nil {
			r.Text = "Group Created! (" + name + ")"
		}
	case command.Join:
		var name string
		if name, err = e.JoinGroup(ctx, c.Groups[0]); err == nil {
			r.Text = "Group Joined! (" + name + ")"
		}
	case command.Leave:
		var name string
		if name, err = e.LeaveGroup(ctx, c.Groups[0]); err == nil {
			r.Text = "Group Left! (" + name + ")"
		}
	case command.List, command.ShowMyGroups:
		if c.Kind == command.List {
			r.Groups, err = e.ListGroups(ctx)
		} else {
			r.Groups, err = e.MyGroups(ctx)
		}
		r.Text = lines(r.Groups, "No groups yet.", func(g Group) string { return fmt.Sprintf("%s : %d", g.Name, g.Members) })
	case command.Members:
		var name string
		if name, r.Members, err = e.Members(ctx, c.Groups[0]); err == nil {
			r.Text = name + " : " + strings.Join(r.Members, ", ")
		}
	case command.History, command.Search:
		if c.Kind == command.History {
			r.Messages, err = e.History(ctx, c.To, c.Count)
		} else {
			r.Messages, err = e.Search(c.Text, 50)
		}
		r.Text = lines(r.Messages, "No messages.", Message.Line)
	case command.Verify:
		var sn string
		if sn, err = e.SafetyNumber(ctx, c.To); err == nil {
			r.Text = "Safety number with " + c.To + ": " + sn
		}
	case command.Trust:
		if err = e.Trust(ctx, c.To, c.Text); err == nil {
			r.Text = "Trusted the new key of " + c.To + "; held messages go now."
		}
	case command.Logout:
		if err = e.Logout(ctx); err == nil {
			r.Text = "Successfully LOGGED OUT!"
		}
	case command.Help:
		r.Text = strings.TrimRight(command.HelpText(), "\n")
	case command.Quit:
		r.Text, r.Quit = "Bye!", true
	default:
		err = ErrUnhandled
	}
	if err != nil {
		r.Text = ""
	}
	return r, err
}

// commandName is a command's classic name, as Help spells it.
func commandName(k command.Kind) string {
	name, _, _ := strings.Cut(command.Usage[k], " <")
	return name
}

// lines joins one line per item, or says none.
func lines[T any](items []T, none string, line func(T) string) string {
	if len(items) == 0 {
		return none
	}
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = line(it)
	}
	return strings.Join(out, "\n")
}

// TransferLine is one transfer as the Transfers command lists it.
func TransferLine(t Transfer) string {
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
