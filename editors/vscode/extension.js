// The Ved extension's client: starts `ved lsp` (the executable is the `ved.path`
// setting) and lets vscode-languageclient speak LSP to it over stdio. Highlighting
// comes from the TextMate grammar in syntaxes/, which needs no server.
const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function startClient() {
  const command = vscode.workspace.getConfiguration("ved").get("path") || "ved";
  const serverOptions = { command, args: ["lsp"], transport: TransportKind.stdio };
  const clientOptions = { documentSelector: [{ scheme: "file", language: "ved" }] };
  client = new LanguageClient("ved", "Ved language server", serverOptions, clientOptions);
  return client.start();
}

function activate(context) {
  // A new `ved.path` takes effect at once: stop the old server, start the new one.
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration("ved.path")) {
        await deactivate();
        await startClient();
      }
    })
  );
  return startClient();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
