//! Putting the programs on interfaces through pinned links (swapped
//! atomically into existing ones), the mirror guards, and taking it all
//! away (`down`).

use super::*;

impl Dataplane {
    /// Puts the ingress program (XDP) and the mirror program (TC ingress) on
    /// `ifname` (in this network namespace). Pinned, an existing link at
    /// `links/<ifname>` (`tc-links/<ifname>`) gets the new program in one
    /// `bpf_link_update` (no moment without it; an XDP link keeps the mode it
    /// was created with); a link whose interface is gone is replaced by a new
    /// one, which is pinned. Returns how the XDP program got there.
    pub fn attach_ingress(&mut self, ifname: &str, mode: AttachMode) -> Result<Attached, DataplaneError> {
        let (how, xdp) = self.attach_pinned(LinkKind::Ingress, ifname, mode)?;
        let (_, tc) = self.attach_pinned(LinkKind::Mirror, ifname, mode)?;
        self.attached.push((ifname.to_owned(), xdp.into_iter().chain(tc).collect()));
        Ok(how)
    }

    /// Puts the mirror guard on every interface of `ifnames` and takes it off
    /// mirror interfaces no longer named (pinned links under `guard-links/`).
    pub fn guard_mirrors(&mut self, ifnames: &std::collections::BTreeSet<String>) -> Result<(), DataplaneError> {
        for ifname in ifnames {
            if !self.guarded.contains_key(ifname) {
                let (how, link) = self.attach_pinned(LinkKind::Guard, ifname, AttachMode::Auto)?;
                if how == Attached::New {
                    tracing::info!(interface = %ifname, "attached {PROG_MIRROR_GUARD} (shadow answers are dropped here)");
                }
                self.guarded.insert(ifname.clone(), link);
            }
        }
        self.guarded.retain(|i, _| ifnames.contains(i));
        if let Some(dir) = &self.pins {
            let keep: Vec<&str> = ifnames.iter().map(String::as_str).collect();
            for gone in unpin_others(&dir.join(PIN_GUARD_LINKS), &keep)? {
                tracing::info!(interface = %gone, "detached {PROG_MIRROR_GUARD}: no service mirrors there now");
            }
        }
        Ok(())
    }

    /// Forgets the guard's link on `ifname` (the interface it was on is
    /// gone), so the next [`Dataplane::guard_mirrors`] attaches a new one.
    pub fn forget_guard(&mut self, ifname: &str) {
        self.guarded.remove(ifname);
    }

    /// Mirror interfaces with the guard attached.
    pub fn guarded(&self) -> impl Iterator<Item = &str> {
        self.guarded.keys().map(String::as_str)
    }

    /// Attaches `kind`'s program to `ifname`, through its pinned link when
    /// there is one. Unpinned (fixtures), the program owns the link.
    fn attach_pinned(
        &mut self,
        kind: LinkKind,
        ifname: &str,
        mode: AttachMode,
    ) -> Result<(Attached, Option<FdLink>), DataplaneError> {
        let Some(dir) = self.pins.clone() else {
            self.attach_new(kind, ifname, mode)?;
            return Ok((Attached::New, None));
        };
        let links = dir.join(kind.dir());
        std::fs::create_dir_all(&links).map_err(|source| DataplaneError::Bpffs { path: links.clone(), source })?;
        let path = links.join(ifname);
        let link_err = |message: String| DataplaneError::Link {
            what: kind.what(),
            ifname: ifname.into(),
            path: path.clone(),
            message,
        };
        if path.exists() {
            let pinned = FdLink::from(PinnedLink::from_pin(&path).map_err(|e| link_err(e.to_string()))?);
            match self.replace_in(kind, pinned) {
                Ok(fd) => return Ok((Attached::Replaced, Some(fd))),
                // The interface it was on is gone (ENOLINK): a new link below.
                Err(e) => {
                    tracing::warn!(
                        interface = ifname,
                        "pinned {} link is defunct ({e}); attaching a new one",
                        kind.what()
                    );
                    std::fs::remove_file(&path)
                        .map_err(|source| DataplaneError::Unpin { path: path.clone(), source })?;
                }
            }
        }
        let fd = self.attach_new(kind, ifname, mode)?.ok_or_else(|| {
            link_err(
                "the kernel attached without a bpf_link (Linux < 6.6 for TC, < 5.9 for XDP); it cannot be pinned"
                    .into(),
            )
        })?;
        let pinned =
            fd.pin(&path).map_err(|source| DataplaneError::Pin { what: "program link", path: path.clone(), source })?;
        Ok((Attached::New, Some(FdLink::from(pinned))))
    }

    /// A new link of `kind`'s program on `ifname`. Pinning, the link is taken
    /// from the program and returned as an `FdLink` when it is one.
    fn attach_new(&mut self, kind: LinkKind, ifname: &str, mode: AttachMode) -> Result<Option<FdLink>, DataplaneError> {
        let pinning = self.pins.is_some();
        let err = |source| DataplaneError::Attach { what: kind.what(), ifname: ifname.to_owned(), source };
        match kind {
            LinkKind::Ingress | LinkKind::Guard => {
                let name = if matches!(kind, LinkKind::Ingress) { PROG_INGRESS } else { PROG_MIRROR_GUARD };
                let prog = xdp_program(&mut self.ebpf, name)?;
                let id = prog.attach(ifname, mode.xdp()).map_err(err)?;
                if !pinning {
                    return Ok(None);
                }
                Ok(FdLink::try_from(prog.take_link(id).map_err(err)?).ok())
            }
            LinkKind::Mirror => {
                let prog = tc_program(&mut self.ebpf)?;
                let id = prog
                    .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .map_err(err)?;
                if !pinning {
                    return Ok(None);
                }
                Ok(FdLink::try_from(prog.take_link(id).map_err(err)?).ok())
            }
        }
    }

    /// Swaps `kind`'s program into the existing link `link` (`bpf_link_update`).
    fn replace_in(&mut self, kind: LinkKind, link: FdLink) -> Result<FdLink, String> {
        match kind {
            LinkKind::Ingress | LinkKind::Guard => {
                let name = if matches!(kind, LinkKind::Ingress) { PROG_INGRESS } else { PROG_MIRROR_GUARD };
                let prog = xdp_program(&mut self.ebpf, name).map_err(|e| e.to_string())?;
                let link = XdpLink::try_from(link).map_err(|e| e.to_string())?;
                let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
                FdLink::try_from(prog.take_link(id).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
            }
            LinkKind::Mirror => {
                let prog = tc_program(&mut self.ebpf).map_err(|e| e.to_string())?;
                let link = SchedClassifierLink::try_from(link).map_err(|e| e.to_string())?;
                let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
                FdLink::try_from(prog.take_link(id).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
            }
        }
    }

    /// Detaches pinned links of interfaces not in `keep` (left by an agent
    /// that served more interfaces); returns their names.
    pub fn detach_others(&mut self, keep: &[&str]) -> Result<Vec<String>, DataplaneError> {
        let Some(dir) = &self.pins else { return Ok(Vec::new()) };
        let gone = unpin_others(&dir.join(PIN_LINKS), keep)?;
        unpin_others(&dir.join(PIN_TC_LINKS), keep)?;
        Ok(gone)
    }

    /// Interfaces the ingress program is attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.iter().map(|(i, _)| i.as_str())
    }
}

/// What one program's link on an interface is, for pinning and messages.
#[derive(Clone, Copy)]
enum LinkKind {
    Ingress,
    Mirror,
    Guard,
}

impl LinkKind {
    fn dir(self) -> &'static str {
        match self {
            LinkKind::Ingress => PIN_LINKS,
            LinkKind::Mirror => PIN_TC_LINKS,
            LinkKind::Guard => PIN_GUARD_LINKS,
        }
    }

    fn what(self) -> &'static str {
        match self {
            LinkKind::Ingress => "XDP",
            LinkKind::Mirror => "TC",
            LinkKind::Guard => "mirror guard XDP",
        }
    }
}

/// Removes everything an agent pinned under `dir`: the links first (each
/// unpin detaches XDP from its interface), then the program and the maps.
/// Returns what was removed. The caller makes sure no agent is running there.
pub fn down(dir: &Path) -> Result<Vec<String>, DataplaneError> {
    let mut removed = Vec::new();
    let unpin = |path: PathBuf, removed: &mut Vec<String>| match std::fs::remove_file(&path) {
        Ok(()) => {
            removed.push(path.display().to_string());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Unpin { path, source }),
    };
    for sub in [PIN_LINKS, PIN_TC_LINKS, PIN_GUARD_LINKS] {
        let links = dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                unpin(entry.path(), &mut removed)?;
            }
            let _ = std::fs::remove_dir(&links);
        }
    }
    for prog in PIN_PROGRAMS {
        unpin(dir.join(prog), &mut removed)?;
    }
    for name in ALL_MAPS.iter().chain(&RETIRED_MAPS) {
        unpin(dir.join(name), &mut removed)?;
    }
    // Only when empty: never removes pins this build does not know.
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}

/// Removes the pinned links in `links` whose interface is not in `keep`
/// (unpinning drops the kernel's last reference: the link detaches); returns
/// their interfaces. A missing directory has none.
fn unpin_others(links: &Path, keep: &[&str]) -> Result<Vec<String>, DataplaneError> {
    let mut gone = Vec::new();
    let entries = match std::fs::read_dir(links) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(gone),
        Err(source) => return Err(DataplaneError::Bpffs { path: links.to_owned(), source }),
    };
    for entry in entries {
        let entry = entry.map_err(|source| DataplaneError::Bpffs { path: links.to_owned(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name.as_str()) {
            std::fs::remove_file(entry.path())
                .map_err(|source| DataplaneError::Unpin { path: entry.path(), source })?;
            gone.push(name);
        }
    }
    Ok(gone)
}
