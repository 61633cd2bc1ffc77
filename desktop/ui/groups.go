package ui

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/dialog"
	"fyne.io/fyne/v2/widget"

	"github.com/e2em/e2em/desktop/engine"
)

// groupBrowser is the group dialog: every group with its member count,
// searched by name; join, leave, create, see members; and a message or a
// file to several groups at once (the classic Send_group and
// Send_group_File), each member once.
type groupBrowser struct {
	app *App

	all      []engine.Group
	mine     map[string]bool
	shown    []engine.Group
	selected map[string]bool // groups ticked for sending

	search  *widget.Entry
	list    *widget.List
	newName *widget.Entry
	message *widget.Entry
	status  *widget.Label
	content fyne.CanvasObject
	dlg     dialog.Dialog
}

func newGroupBrowser(app *App) *groupBrowser {
	g := &groupBrowser{app: app, mine: map[string]bool{}, selected: map[string]bool{},
		search: widget.NewEntry(), newName: widget.NewEntry(), message: widget.NewEntry(), status: widget.NewLabel("")}
	g.status.Wrapping = fyne.TextWrapWord
	g.search.SetPlaceHolder("Search groups")
	g.search.OnChanged = func(string) { g.filter() }
	g.newName.SetPlaceHolder("new group's name")
	g.message.SetPlaceHolder("a message to the ticked groups")
	g.list = widget.NewList(
		func() int { return len(g.shown) },
		func() fyne.CanvasObject {
			tick := widget.NewCheck("", nil)
			name := widget.NewLabel("")
			join := widget.NewButton("Join", nil)
			members := widget.NewButton("Members", nil)
			return container.NewBorder(nil, nil, tick, container.NewHBox(members, join), name)
		},
		func(i widget.ListItemID, o fyne.CanvasObject) {
			if i >= len(g.shown) {
				return
			}
			grp := g.shown[i]
			row := o.(*fyne.Container)
			name := row.Objects[0].(*widget.Label)
			tick := row.Objects[1].(*widget.Check)
			buttons := row.Objects[2].(*fyne.Container).Objects
			members, join := buttons[0].(*widget.Button), buttons[1].(*widget.Button)
			label := fmt.Sprintf("%s · %d members", grp.Name, grp.Members)
			if grp.Members == 1 {
				label = grp.Name + " · 1 member"
			}
			if g.mine[strings.ToLower(grp.Name)] {
				label += " · yours"
				join.SetText("Leave")
				join.OnTapped = func() { g.leave(grp.Name) }
			} else {
				join.SetText("Join")
				join.OnTapped = func() { g.join(grp.Name) }
			}
			name.SetText(label)
			tick.OnChanged = nil
			tick.SetChecked(g.selected[grp.Name])
			tick.OnChanged = func(on bool) { g.selected[grp.Name] = on }
			members.OnTapped = func() { g.showMembers(grp.Name) }
		})
	create := widget.NewButton("Create", g.create)
	send := widget.NewButton("Send to ticked groups", g.sendMessage)
	sendFile := widget.NewButton("Send a file to ticked groups…", g.pickFile)
	top := container.NewVBox(g.search)
	bottom := container.NewVBox(
		container.NewBorder(nil, nil, nil, create, g.newName),
		container.NewBorder(nil, nil, nil, container.NewHBox(send, sendFile), g.message),
		g.status)
	g.content = container.NewBorder(top, bottom, nil, nil, g.list)
	return g
}

// open shows the dialog and reads the groups.
func (g *groupBrowser) open() {
	if g.dlg == nil {
		g.dlg = dialog.NewCustom("Groups", "Close", g.content, g.app.win)
	}
	g.dlg.Resize(fyne.NewSize(720, 520))
	g.dlg.Show()
	g.reload()
}

// reload reads every group, and yours, from the cluster.
func (g *groupBrowser) reload() {
	var all, mine []engine.Group
	g.app.background(func(ctx context.Context) (err error) {
		if all, err = g.app.eng.ListGroups(ctx); err != nil {
			return err
		}
		mine, err = g.app.eng.MyGroups(ctx)
		return err
	}, func(err error) {
		if err != nil {
			g.status.SetText(words(err))
			return
		}
		sort.Slice(all, func(i, j int) bool { return strings.ToLower(all[i].Name) < strings.ToLower(all[j].Name) })
		g.all = all
		g.mine = map[string]bool{}
		for _, m := range mine {
			g.mine[strings.ToLower(m.Name)] = true
		}
		g.filter()
	})
}

// filter shows the groups whose names hold the search text.
func (g *groupBrowser) filter() {
	q := strings.ToLower(strings.TrimSpace(g.search.Text))
	g.shown = g.shown[:0]
	for _, grp := range g.all {
		if strings.Contains(strings.ToLower(grp.Name), q) {
			g.shown = append(g.shown, grp)
		}
	}
	g.list.Refresh()
}

// groupCall runs a join, leave or create and reads the groups again.
func (g *groupBrowser) groupCall(done string, call func(ctx context.Context) (string, error)) {
	var name string
	g.app.background(func(ctx context.Context) (err error) {
		name, err = call(ctx)
		return err
	}, func(err error) {
		if err != nil {
			g.status.SetText(words(err))
			return
		}
		g.status.SetText(fmt.Sprintf(done, name))
		g.reload()
	})
}

func (g *groupBrowser) join(name string) {
	g.groupCall("Joined %s.", func(ctx context.Context) (string, error) { return g.app.eng.JoinGroup(ctx, name) })
}

func (g *groupBrowser) leave(name string) {
	g.groupCall("Left %s.", func(ctx context.Context) (string, error) { return g.app.eng.LeaveGroup(ctx, name) })
}

func (g *groupBrowser) create() {
	name := strings.TrimSpace(g.newName.Text)
	if name == "" {
		g.status.SetText("Give the new group a name.")
		return
	}
	g.groupCall("Created %s; you are its first member.", func(ctx context.Context) (string, error) {
		created, err := g.app.eng.CreateGroup(ctx, name)
		if err == nil {
			g.newName.SetText("")
		}
		return created, err
	})
}

func (g *groupBrowser) showMembers(name string) {
	var members []string
	g.app.background(func(ctx context.Context) (err error) {
		_, members, err = g.app.eng.Members(ctx, name)
		return err
	}, func(err error) {
		if err != nil {
			g.status.SetText(words(err))
			return
		}
		g.status.SetText(name + ": " + strings.Join(members, ", "))
	})
}

// ticked lists the ticked groups, in order.
func (g *groupBrowser) ticked() []string {
	var out []string
	for name, on := range g.selected {
		if on {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (g *groupBrowser) sendMessage() {
	groups, text := g.ticked(), strings.TrimSpace(g.message.Text)
	if len(groups) == 0 || text == "" {
		g.status.SetText("Tick one or more groups and write the message.")
		return
	}
	var n int
	g.app.background(func(ctx context.Context) (err error) {
		n, err = g.app.eng.SendGroup(ctx, groups, text)
		return err
	}, func(err error) {
		if err != nil {
			g.status.SetText("Not sent: " + words(err))
			return
		}
		g.message.SetText("")
		g.status.SetText(fmt.Sprintf("Message Sent! (to %d members of %s)", n, strings.Join(groups, ", ")))
		g.app.chats.reload()
	})
}

func (g *groupBrowser) pickFile() {
	groups := g.ticked()
	if len(groups) == 0 {
		g.status.SetText("Tick one or more groups first.")
		return
	}
	dialog.ShowFileOpen(func(f fyne.URIReadCloser, err error) {
		if err != nil || f == nil {
			return
		}
		path := f.URI().Path()
		f.Close()
		g.sendFile(path, groups)
	}, g.app.win)
}

func (g *groupBrowser) sendFile(path string, groups []string) {
	g.app.background(func(ctx context.Context) error {
		_, err := g.app.eng.SendGroupFile(ctx, path, groups...)
		return err
	}, func(err error) {
		if err != nil {
			g.status.SetText("Not sent: " + words(err))
			return
		}
		g.status.SetText("Sending the file to " + strings.Join(groups, ", ") + "; its progress shows below the conversation.")
	})
}
