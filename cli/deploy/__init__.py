"""Real deployments: certificates, the SuperLink and SuperNode processes, the warm ClientApp launcher."""
