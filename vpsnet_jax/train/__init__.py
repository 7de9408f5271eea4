"""Training: tasks (model + loss), input, train state, parallel steps, loop."""
