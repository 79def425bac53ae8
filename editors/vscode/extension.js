// The Ved extension's client: starts `ved lsp` (the path is the `ved.path`
// setting) and lets vscode-languageclient speak LSP to it over stdio. Highlighting
// comes from the TextMate grammar in syntaxes/, which needs no server.
const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("ved").get("path") || "ved";
  const serverOptions = { command, args: ["lsp"], transport: TransportKind.stdio };
  const clientOptions = { documentSelector: [{ scheme: "file", language: "ved" }] };
  client = new LanguageClient("ved", "Ved language server", serverOptions, clientOptions);
  // Restart the server when its path changes.
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration("ved.path")) {
        await deactivate();
        activate(context);
      }
    })
  );
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
