package ui

import (
	"fmt"
	"strconv"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/dialog"
	"fyne.io/fyne/v2/widget"

	"github.com/e2em/e2em/desktop/engine"
)

// chatsScreen is the main window: conversations on the left, the one
// chosen on the right, a status line below.
type chatsScreen struct {
	app *App

	convs    []engine.Conversation
	list     *widget.List
	selected string // the chosen conversation's id
	view     *conversationView
	search   *widget.Entry
	found    []engine.Message // the last search's results
	status   *widget.Label
	content  fyne.CanvasObject
}

func newChatsScreen(app *App) *chatsScreen {
	c := &chatsScreen{app: app, status: widget.NewLabel("")}
	c.view = newConversationView(app)
	c.list = widget.NewList(
		func() int { return len(c.convs) },
		func() fyne.CanvasObject {
			name := widget.NewLabelWithStyle("", fyne.TextAlignLeading, fyne.TextStyle{Bold: true})
			last := widget.NewLabel("")
			last.Truncation = fyne.TextTruncateEllipsis
			badge := widget.NewLabel("")
			return container.NewBorder(nil, nil, nil, badge, container.NewVBox(name, last))
		},
		func(i widget.ListItemID, o fyne.CanvasObject) {
			if i >= len(c.convs) {
				return
			}
			conv := c.convs[i]
			row := o.(*fyne.Container)
			texts := row.Objects[0].(*fyne.Container).Objects
			texts[0].(*widget.Label).SetText(convTitle(conv))
			texts[1].(*widget.Label).SetText(lastLine(conv))
			badge := ""
			if conv.Unread > 0 {
				badge = fmt.Sprintf("(%d)", conv.Unread)
			}
			row.Objects[1].(*widget.Label).SetText(badge)
		})
	c.list.OnSelected = func(i widget.ListItemID) {
		if i < len(c.convs) {
			c.open(c.convs[i])
		}
	}
	newChat := widget.NewButton("New message (Ctrl+K)", func() { app.bar.open() })
	groups := widget.NewButton("Groups…", func() { app.groups.open() })
	settings := widget.NewButton("Settings…", func() { app.showSettings(app.eng.Downloads()) })
	c.search = widget.NewEntry()
	c.search.SetPlaceHolder("Search messages")
	c.search.OnSubmitted = c.searchHistory
	left := container.NewBorder(container.NewVBox(newChat, groups, c.search), settings, nil, nil, c.list)
	split := container.NewHSplit(left, c.view.content)
	split.Offset = 0.3
	c.content = container.NewBorder(nil, c.status, nil, nil, split)
	return c
}

// convTitle names a conversation, with the person's presence.
func convTitle(c engine.Conversation) string {
	if c.Peer == "" {
		return "# " + c.Group
	}
	mark := "○"
	switch c.Presence {
	case engine.PresenceDirect:
		mark = "●"
	case engine.PresenceRelayed:
		mark = "◐"
	}
	return mark + " " + c.Peer
}

func lastLine(c engine.Conversation) string {
	if c.Last == nil {
		return ""
	}
	who := c.Last.From + ": "
	if c.Last.Outgoing {
		who = "you: "
	}
	return who + strings.ReplaceAll(c.Last.Body, "\n", " ")
}

// reload reads the conversations again and redraws.
func (c *chatsScreen) reload() {
	if c.selected != "" {
		// What arrives in the open conversation is read as it arrives.
		c.app.eng.MarkRead(c.selected)
		c.view.reload()
	}
	convs, err := c.app.eng.Conversations()
	if err != nil {
		c.notice(words(err))
		return
	}
	c.convs = convs
	c.list.Refresh()
	for _, conv := range convs {
		if conv.ID == c.selected {
			c.view.banner.show(conv.Peer, conv.KeyChanged)
		}
	}
}

// open shows a conversation and marks it read.
func (c *chatsScreen) open(conv engine.Conversation) {
	c.selected = conv.ID
	c.view.show(conv)
	if conv.Unread > 0 {
		c.reload()
	}
}

// openPeer shows the conversation with login (a new one if none yet).
func (c *chatsScreen) openPeer(login string) {
	for _, conv := range c.convs {
		if conv.Peer == login {
			c.open(conv)
			return
		}
	}
	c.open(engine.Conversation{ID: "@" + login, Peer: login})
}

func (c *chatsScreen) setStatus(ev engine.Event) {
	if ev.Text == engine.StatusConnected {
		c.status.SetText("Connected to the e2em cluster.")
		return
	}
	c.status.SetText("Not connected to the e2em cluster (" + ev.Body + "); messages wait and go when it is back.")
}

// notice shows something the person should read, in the status line.
func (c *chatsScreen) notice(text string) { c.status.SetText(text) }

// searchLimit bounds what one search shows.
const searchLimit = 100

// searchHistory finds messages holding text in every conversation and
// lists them; choosing one opens its conversation.
func (c *chatsScreen) searchHistory(text string) {
	text = strings.TrimSpace(text)
	if text == "" {
		return
	}
	found, err := c.app.eng.Search(text, searchLimit)
	if err != nil {
		c.notice(words(err))
		return
	}
	c.found = found
	if len(found) == 0 {
		c.notice("No message holds " + strconv.Quote(text) + ".")
		return
	}
	var d dialog.Dialog
	list := widget.NewList(func() int { return len(found) },
		func() fyne.CanvasObject { l := widget.NewLabel(""); l.Truncation = fyne.TextTruncateEllipsis; return l },
		func(i widget.ListItemID, o fyne.CanvasObject) { o.(*widget.Label).SetText(found[i].Line()) })
	list.OnSelected = func(i widget.ListItemID) {
		m := found[i]
		if m.Group != "" {
			c.openGroup(m.Group)
		} else {
			c.openPeer(m.Peer)
		}
		d.Hide()
	}
	d = dialog.NewCustom(fmt.Sprintf("%d messages with %q", len(found), text), "Close", list, c.app.win)
	d.Resize(fyne.NewSize(720, 420))
	d.Show()
}

// openGroup shows a group's conversation.
func (c *chatsScreen) openGroup(group string) {
	for _, conv := range c.convs {
		if strings.EqualFold(conv.Group, group) {
			c.open(conv)
			return
		}
	}
	c.open(engine.Conversation{ID: "#" + strings.ToLower(group), Group: group})
}
