//! From a whole request body to the commands it holds, and the checks made
//! before any of them runs.
//!
//! The body is decoded and fed to a [`ServerReactor`] first, only to find
//! its commands and check them: a body the reactor or the codec finds fault
//! with runs nothing (the HTTP request is refused as a whole with the
//! reactor's message), and a command the URL does not allow stops the whole
//! body. Only then does the body go through the request lifecycle that
//! runs it (`responses.rs`).

use bytes::BytesMut;
use std::fmt::Write;
use wiremux_engine::{Config, Permission, Refusal, Registry};
use wiremux_proto::server::{Action, ServerReactor};
use wiremux_proto::FrameCodec;
use wiremux_proto::Request as Command;

/// The commands of a well-formed body.
#[derive(Debug)]
pub(crate) struct Assembled {
    pub(crate) commands: Vec<Command>,
}

/// Decodes `body` and assembles its commands; `Err` with a message for a
/// person if any frame is malformed or any command is incomplete.
pub(crate) fn assemble(mut body: BytesMut, config: &Config) -> Result<Assembled, String> {
    let mut codec = FrameCodec::new().max_recv_payload(config.max_recv_payload);
    let mut reactor = ServerReactor::with_limits(config.limits.clone()).defer_output(true);
    let mut commands = Vec::new();
    loop {
        let frame = match codec.decode_frame_eof(&mut body) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(err) => return Err(err.to_string()),
        };
        match reactor.on_frame(frame) {
            Action::RunCommand(command) => commands.push(command),
            Action::Error(err) => return Err(err.message()),
            // Nothing has run, so nothing can be sent yet.
            Action::WantFrame { .. } | Action::Noop | Action::SendFrames(_) => {}
        }
    }
    // With deferred output and no response given yet, any frames here are
    // the errors of requests that were still arriving.
    match reactor.on_input_eof() {
        Action::SendFrames(frames) if !frames.is_empty() => {
            let messages: Vec<String> = frames
                .iter()
                .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
                .collect();
            Err(messages.join("; "))
        }
        Action::Error(err) => Err(err.message()),
        _ => Ok(Assembled { commands }),
    }
}

/// The name of a command as text.
pub(crate) fn name(command: &Command) -> String {
    String::from_utf8_lossy(&command.name).into_owned()
}

/// Checks every command against the access granted, before any runs.
/// `Err` lists each command that needs more (CVE-2018-1000132 was a batch
/// path that skipped this). Unknown commands pass here: each is answered
/// with its own error-response when it would run.
pub(crate) fn check_all(
    registry: &Registry,
    commands: &[Command],
    granted: Permission,
) -> Result<(), String> {
    let mut refused = String::new();
    for command in commands {
        if let Err(Refusal::ReadOnly(name)) = registry.check(&command.name, granted) {
            if !refused.is_empty() {
                refused.push_str(", ");
            }
            let _ = write!(refused, "{name} (request {})", command.request_id);
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused)
    }
}

/// For a single-command URL: the body must hold exactly one command, named
/// as the URL names it.
pub(crate) fn check_single(url_command: &str, commands: &[Command]) -> Result<(), String> {
    match commands {
        [] => Err(format!(
            "this URL runs one `{url_command}` command, and the body holds none"
        )),
        [only] if only.name == url_command.as_bytes() => Ok(()),
        [only] => Err(format!(
            "the URL names `{url_command}` but the body's command is `{}` (request {})",
            name(only),
            only.request_id
        )),
        [_, second, ..] => Err(format!(
            "this URL runs exactly one command; the body holds {} (the second is `{}`, request {}); \
             use multirequest for several",
            commands.len(),
            name(second),
            second.request_id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremux_proto::human::parse_frame;

    fn body(lines: &[&str]) -> BytesMut {
        let mut out = BytesMut::new();
        for line in lines {
            parse_frame(line).unwrap().encode(&mut out);
        }
        out
    }

    fn commands(lines: &[&str]) -> Vec<Command> {
        assemble(body(lines), &Config::default()).unwrap().commands
    }

    #[test]
    fn interleaved_commands_come_out_whole() {
        let cmds = commands(&[
            "1 command-name have-args get",
            "3 command-name have-data echo",
            "3 command-data continuation ab",
            "1 command-argument eoa \\x03\\x00\\x01\\x00keyk",
            "3 command-data eos c",
        ]);
        assert_eq!(cmds.len(), 2);
        assert_eq!((cmds[0].request_id, &cmds[0].name[..]), (1, &b"get"[..]));
        assert_eq!(cmds[0].arg("key").map(|v| &v[..]), Some(&b"k"[..]));
        assert_eq!(cmds[1].data.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn malformed_and_incomplete_bodies_are_refused_with_the_reactors_message() {
        let err = assemble(body(&["2 command-name eos echo"]), &Config::default()).unwrap_err();
        assert_eq!(
            err,
            "request 2: a client command must use an odd request ID"
        );
        let err =
            assemble(body(&["1 command-name have-args echo"]), &Config::default()).unwrap_err();
        assert_eq!(
            err,
            "request 1: input ended before the command was complete (receiving arguments)"
        );
        let err = assemble(
            BytesMut::from(&b"\x05\x00\x00\x01\x00\x11ab"[..]),
            &Config::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "input ended inside a frame: 2 of 5 payload bytes of a frame for request 1"
        );
    }

    #[test]
    fn every_write_command_is_named() {
        let registry = wiremux_engine::demo::registry();
        let cmds = commands(&[
            "1 command-name have-args put",
            "1 command-argument eoa \\x03\\x00\\x01\\x00keyk",
            "3 command-name eos echo",
            "5 command-name have-args put",
            "5 command-argument eoa \\x03\\x00\\x01\\x00keyj",
            "7 command-name eos nope",
        ]);
        assert_eq!(
            check_all(&registry, &cmds, Permission::Read),
            Err("put (request 1), put (request 5)".to_string())
        );
        assert_eq!(check_all(&registry, &cmds, Permission::Write), Ok(()));
    }

    #[test]
    fn single_command_urls_take_exactly_their_command() {
        assert_eq!(
            check_single("echo", &commands(&["1 command-name eos echo"])),
            Ok(())
        );
        assert_eq!(
            check_single("echo", &commands(&["1 command-name eos get"])),
            Err("the URL names `echo` but the body's command is `get` (request 1)".to_string())
        );
        assert_eq!(
            check_single("echo", &commands(&["1 command-name eos echo", "3 command-name eos echo"])),
            Err("this URL runs exactly one command; the body holds 2 (the second is `echo`, request 3); use multirequest for several".to_string())
        );
        assert_eq!(
            check_single("echo", &[]),
            Err("this URL runs one `echo` command, and the body holds none".to_string())
        );
    }
}
