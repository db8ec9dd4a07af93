//! `wormhole-doomed-client {tokio|smol} TICKET`: the client the
//! killed-client test starts and SIGKILLs (see `wormhole_tests::doomed`).

use wormhole_io::Ticket;
use wormhole_smol::SmolShell;
use wormhole_tokio::TokioShell;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shell, ticket] = args.as_slice() else {
        eprintln!("usage: wormhole-doomed-client {{tokio|smol}} TICKET");
        std::process::exit(2);
    };
    let ticket = Ticket::parse(ticket).expect("the ticket parses");
    match shell.as_str() {
        "tokio" => wormhole_tests::doomed::run(&TokioShell::new().expect("tokio"), &ticket),
        "smol" => wormhole_tests::doomed::run(&SmolShell::new().expect("smol"), &ticket),
        other => {
            eprintln!("unknown shell {other:?}: tokio or smol");
            std::process::exit(2);
        }
    }
}
